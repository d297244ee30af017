package train

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Detach starts `exe train KIND` on the run as a background process (its own session, so closing the terminal
// does not stop it) writing to the run's log.txt; args are the trainer's flags (--detach and --resume are
// dropped: the child trains the run folder it is given).
func Detach(exe string, run *Run, kind string, args []string) error {
	var child []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--detach" || a == "-detach" || strings.HasPrefix(a, "--detach=") || strings.HasPrefix(a, "-detach=") {
			continue
		}
		if a == "--resume" || a == "-resume" {
			i++
			continue
		}
		if strings.HasPrefix(a, "--resume=") || strings.HasPrefix(a, "-resume=") {
			continue
		}
		child = append(child, a)
	}
	logf, err := os.OpenFile(filepath.Join(run.Dir, "log.txt"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe, append([]string{"train", kind, "--run-dir", run.Dir}, child...)...)
	cmd.Stdout, cmd.Stderr, cmd.Stdin = logf, logf, nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the background training: %w", err)
	}
	st, _ := run.ReadState()
	st.PID, st.State, st.Updated = cmd.Process.Pid, Running, time.Now().UTC()
	run.WriteState(st)
	cmd.Process.Release()
	return nil
}
