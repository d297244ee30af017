package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keel-lab/keel/bench"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/sessions"
)

// startServe runs `keel serve` with args in the background and returns the addresses it printed: "http" and
// "ssh" (HOST PORT) as it serves them. The process is killed (-9) when the test ends.
func startServe(t *testing.T, env []string, args ...string) (*exec.Cmd, map[string]string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"serve"}, args...)...)
	cmd.Env = append(append(os.Environ(), "KEEL_TEST_MAIN=1"), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	want := 0
	for _, a := range args {
		if a == "--ssh" || a == "--http" {
			want++
		}
	}
	addrs := bench.ServeAddrs(bufio.NewScanner(stdout), want)
	if len(addrs) < want {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("keel serve printed no address: %s", stderr.String())
	}
	go io.Copy(io.Discard, stdout)
	return cmd, addrs
}

// sshKey makes an ed25519 key pair whose public line carries comment; it returns the private key's path.
func sshKey(t *testing.T, dir, comment string) string {
	t.Helper()
	path := filepath.Join(dir, comment)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	return path
}

// The workbench over SSH with OpenSSH's own client, in tmux, as two users at once on one served model: each chats
// and sees its own plot (one with capping on, its tau line drawn), a resize re-lays one out, a key not in
// authorized_keys is refused, a user who disconnects mid-reply frees the row, and kill -9 of the server keeps
// every finished turn in each user's own recording.
func TestServeSSHWorkbenchForTwoUsers(t *testing.T) {
	torchtest.Runtime(t)
	for _, tool := range []string{"ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (apt-get install openssh-client): the SSH test logs in with OpenSSH's own client", tool)
		}
	}
	dir := t.TempDir()
	alice, bob, mallory := sshKey(t, dir, "alice"), sshKey(t, dir, "bob"), sshKey(t, dir, "mallory")
	var authorized []byte
	for _, k := range []string{alice, bob} {
		pub, err := os.ReadFile(k + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		authorized = append(authorized, pub...)
	}
	keys := filepath.Join(dir, "authorized_keys")
	os.WriteFile(keys, authorized, 0o600)
	state := filepath.Join(dir, "state")
	server, addrs := startServe(t, []string{"XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "XDG_CACHE_HOME=" + filepath.Join(dir, "cache")},
		"--threads", "1", "--ssh", "127.0.0.1:0", "--http", "127.0.0.1:0", "--authorized-keys", keys, "--state", state)
	host, port, _ := strings.Cut(addrs["ssh"], " ")
	login := func(key string, cols, rows int) *tmuxSession {
		return startTmuxCommand(t, cols, rows, strings.Join([]string{"ssh", "-tt", "-i", shellQuote(key), "-p", port,
			"-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "UserKnownHostsFile=" + shellQuote(filepath.Join(dir, "known_hosts")),
			"-o", "BatchMode=yes", host}, " "))
	}
	a, b := login(alice, 130, 40), login(bob, 110, 36)
	for _, s := range []*tmuxSession{a, b} {
		s.waitFor("the workbench over SSH", 60*time.Second, func(sc string) bool { return strings.Contains(sc, "Assistant Axis, layer 4") })
	}
	a.keys("C-k")
	a.waitFor("capping on", 10*time.Second, func(sc string) bool { return strings.Contains(sc, "cap p25 layers") })
	a.keys("Who are you?", "Enter")
	b.keys("Who are you?", "Enter")
	replied := func(sc string) bool {
		return strings.Contains(sc, "model ") && strings.Contains(sc, "■ token") && regexp.MustCompile(`\d ┤`).MatchString(sc) && strings.Contains(sc, "ready")
	}
	screenA := a.waitFor("alice's reply with its plot", 60*time.Second, replied)
	screenB := b.waitFor("bob's reply with its plot", 60*time.Second, replied)
	if !strings.Contains(screenA, "■ tau") || strings.Contains(screenB, "■ tau") || strings.Contains(screenB, "cap p25 layers") {
		t.Fatalf("alice caps and bob does not, each on their own plot:\n%s\n%s", screenA, screenB)
	}
	// A narrower window puts the plot under the chat.
	if out, err := exec.Command("tmux", "resize-window", "-t", b.name, "-x", "80", "-y", "30").CombinedOutput(); err != nil {
		t.Fatalf("tmux resize: %v %s", err, out)
	}
	b.waitFor("the narrow layout after a resize", 10*time.Second, func(sc string) bool {
		return regexp.MustCompile(`(?m)^ Assistant Axis, layer 4`).MatchString(sc)
	})

	// A key not in authorized_keys is refused before any workbench starts.
	out, err := exec.Command("ssh", "-i", mallory, "-p", port, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=accept-new", "-o", "UserKnownHostsFile="+filepath.Join(dir, "known_hosts"), host, "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Permission denied (publickey)") {
		t.Fatalf("a key not in authorized_keys: err %v, output %s", err, out)
	}

	// Bob goes away while his next reply streams: his row is freed.
	b.keys("Tell me about yourself.", "Enter")
	time.Sleep(150 * time.Millisecond)
	exec.Command("tmux", "kill-session", "-t", b.name).Run()
	active := regexp.MustCompile(`(?m)^keel_active_rows (\d+)$`)
	var metrics string
	for start := time.Now(); time.Since(start) < 20*time.Second; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get("http://" + addrs["http"] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if metrics = string(raw); active.FindStringSubmatch(metrics) != nil && active.FindStringSubmatch(metrics)[1] == "0" {
			break
		}
	}
	if m := active.FindStringSubmatch(metrics); m == nil || m[1] != "0" {
		t.Fatalf("rows still active after bob left:\n%s", metrics)
	}

	// kill -9: every finished turn is in its user's own recording.
	server.Process.Kill()
	server.Wait()
	for user, capped := range map[string]bool{"alice": true, "bob": false} {
		files, _ := filepath.Glob(filepath.Join(state, "users", user, "sessions", "*.jsonl"))
		if len(files) != 1 {
			t.Fatalf("%s's recordings: %v", user, files)
		}
		s, err := sessions.Load(files[0])
		if err != nil {
			t.Fatalf("%s's recording after kill -9: %v", user, err)
		}
		var reply string
		var caps bool
		for _, e := range s.Events {
			if e.Type == sessions.TurnEnd && e.Role == "assistant" && reply == "" {
				reply = e.Text
			}
			caps = caps || len(e.Caps) > 0
		}
		if !strings.Contains(reply, "AI assistant") || caps != capped {
			t.Fatalf("%s's recording: first reply %q, cap records %v (want %v)", user, reply, caps, capped)
		}
	}
}
