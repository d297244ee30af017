package workbench_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/train"
	"github.com/keel-lab/keel/workbench"
)

// On a shared machine every user's runner lists every run, and cancels only the runs its own user started.
func TestJobsCancelOnlyTheirOwnersRuns(t *testing.T) {
	runs := t.TempDir()
	mine, err := train.NewRun(runs, "sft")
	if err != nil {
		t.Fatal(err)
	}
	if err := mine.SetOwner("alice"); err != nil {
		t.Fatal(err)
	}
	local, err := train.NewRun(runs, "sft") // started by `keel train` on the machine itself
	if err != nil {
		t.Fatal(err)
	}
	cancelled := func(r *train.Run) bool { _, err := os.Stat(filepath.Join(r.Dir, "cancel")); return err == nil }
	bob := &workbench.ProcessJobs{RunsDir: runs, Owner: "bob"}
	if err := bob.Cancel(mine.ID); err == nil || !strings.Contains(err.Error(), "started by alice") || cancelled(mine) {
		t.Fatalf("bob cancelling alice's job: %v (cancelled %v)", err, cancelled(mine))
	}
	if err := bob.Cancel(local.ID); err == nil || cancelled(local) {
		t.Fatalf("bob cancelling a job started on the machine: %v", err)
	}
	alice := &workbench.ProcessJobs{RunsDir: runs, Owner: "alice"}
	if err := alice.Cancel(mine.ID); err != nil || !cancelled(mine) {
		t.Fatalf("alice cancelling her own job: %v (cancelled %v)", err, cancelled(mine))
	}
	// The machine's own chat (no owner) cancels any run, as `keel jobs cancel` does.
	if err := (&workbench.ProcessJobs{RunsDir: runs}).Cancel(local.ID); err != nil || !cancelled(local) {
		t.Fatalf("cancelling from the machine's own chat: %v", err)
	}
}
