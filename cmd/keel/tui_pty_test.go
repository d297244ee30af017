package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// openPTY opens a pseudo-terminal pair of the given size: the master (the "terminal", which here never answers
// a query) and the slave (keel's stdin, stdout and stderr).
func openPTY(t *testing.T, rows, cols uint16) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	slave, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty slave: %v", err)
	}
	t.Cleanup(func() { slave.Close() })
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatalf("pty size: %v", err)
	}
	return master, slave
}

// The workbench never queries the terminal (bubbletea v1 asks for the background colour and a cursor report in
// its package init, and a terminal that never answers stalled it 5 s): on a silent pseudo-terminal with a
// TERM that allows queries, its output holds neither query and the first frame comes without the wait.
func TestTUIDoesNotQueryTheTerminal(t *testing.T) {
	torchtest.Runtime(t)
	master, slave := openPTY(t, 40, 120)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "tui", "--no-record", "--threads", "1", "--runs", filepath.Join(dir, "runs"))
	cmd.Env = append(os.Environ(), "KEEL_TEST_MAIN=1", "TERM=xterm-256color", "COLORTERM=", "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var mu sync.Mutex
	var out bytes.Buffer
	var framed time.Duration
	go func() {
		buf := make([]byte, 1<<16)
		for {
			n, err := master.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			if framed == 0 && bytes.Contains(out.Bytes(), []byte("Assistant Axis")) {
				framed = time.Since(start)
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		done := framed != 0
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for name, q := range map[string]string{"background colour (OSC 11)": "\x1b]11;?", "cursor position (CSI 6n)": "\x1b[6n"} {
		if bytes.Contains(out.Bytes(), []byte(q)) {
			t.Errorf("keel queried the terminal's %s", name)
		}
	}
	if framed == 0 {
		t.Fatalf("no first frame within 60 s; output: %q", out.String())
	}
	t.Logf("first frame after %v (libtorch and the embedded model load before it)", framed.Round(time.Millisecond))
}
