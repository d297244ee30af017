package workbench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/train"
)

// JobUpdate is a background job's progress as a front end shows it.
type JobUpdate struct {
	ID, Kind, State string
	Owner           string // the keel serve user who started it ("" outside keel serve)
	Phase           string // what a running job does before its first step ("scoring rollouts")
	Step, Total     int
	Loss            float64
	ETA             time.Duration
	Final           string             // the finished model folder
	Error           string             //
	Extra           map[string]float64 // the trainer's own figures at this step (A-LoL: advantage, weights, validation reward)
}

// JobRunner starts, lists and cancels background fine-tunes; progress comes back through the callback the
// runner was made with.
type JobRunner interface {
	// Start launches a job of kind (sft, alol, ppo) with the trainer's flags; the model is the chat's. A bad
	// flag or a missing file is refused here, before any run exists.
	Start(kind string, args []string) (id string, err error)
	Cancel(id string) error
	// ModelDir is the model folder of a job's weights: "ID" its final weights, "ID@STEP" its checkpoint at that
	// step. It may take a while (a checkpoint becomes a model folder on first use).
	ModelDir(ref string) (string, error)
	// Sync reports every run on the machine once and watches the unfinished ones.
	Sync(ctx context.Context) error
}

// ProcessJobs runs fine-tunes as `keel train` processes (they outlive the session, and `keel jobs` sees them)
// and watches every run folder under RunsDir, whoever started it.
type ProcessJobs struct {
	RT      *torch.Runtime
	Exe     string // the keel binary
	Model   string // the chat's model folder
	RunsDir string
	Send    func(JobUpdate)
	// Owner, when set, is the user this runner acts for on a shared machine: the jobs it starts are theirs, and
	// it cancels no one else's.
	Owner string
	// Confine, when set, is what a remote user's jobs may do (keel serve); nil: a local user's full powers.
	Confine *Confinement
	mu      sync.Mutex
	watched map[string]bool
}

// fileFlags are the trainers' flags that name an input file: checked before a job starts.
var fileFlags = map[string]bool{"--data": true, "--prompts": true, "--eval-data": true}

// Start implements JobRunner: the run folder is made here, so its id is known without reading the child's output.
func (p *ProcessJobs) Start(kind string, args []string) (string, error) {
	if kind != "sft" && kind != "alol" && kind != "ppo" {
		return "", fmt.Errorf("/train %s: keel fine-tunes with sft, alol or ppo", kind)
	}
	if p.Confine != nil {
		return p.startConfined(kind, args)
	}
	for i, a := range args {
		name, val, eq := strings.Cut(a, "=")
		if !fileFlags[name] && !fileFlags["-"+name] {
			continue
		}
		if !eq {
			if i+1 >= len(args) {
				return "", fmt.Errorf("/train %s: %s needs a file", kind, name)
			}
			val = args[i+1]
		}
		if _, err := os.Stat(val); err != nil {
			return "", fmt.Errorf("/train %s: %s %s: no such file: give a JSONL file that exists", kind, name, val)
		}
	}
	run, err := train.NewRun(p.RunsDir, kind)
	if err != nil {
		return "", err
	}
	if p.Owner != "" {
		if err := run.SetOwner(p.Owner); err != nil {
			os.RemoveAll(run.Dir)
			return "", err
		}
	}
	full := append([]string{"train", kind, "--model", p.Model, "--runs", p.RunsDir, "--run-dir", run.Dir, "--detach"}, args...)
	if out, err := exec.Command(p.Exe, full...).CombinedOutput(); err != nil {
		os.RemoveAll(run.Dir)
		return "", fmt.Errorf("keel train %s: %s", kind, strings.TrimSpace(string(out)))
	}
	p.watch(run, kind)
	return run.ID, nil
}

// Sync implements JobRunner.
func (p *ProcessJobs) Sync(ctx context.Context) error {
	states, err := train.ListRuns(p.RunsDir)
	if err != nil {
		return err
	}
	for i := len(states) - 1; i >= 0; i-- { // oldest first: the pane lists them in the order they began
		s := states[i]
		if run, err := train.OpenRun(p.RunsDir, s.ID); err == nil {
			p.watch(run, s.Kind)
		}
	}
	return nil
}

// watch follows a run's state and metrics until it ends (once per run).
func (p *ProcessJobs) watch(run *train.Run, kind string) {
	p.mu.Lock()
	if p.watched == nil {
		p.watched = map[string]bool{}
	}
	seen := p.watched[run.ID]
	p.watched[run.ID] = true
	p.mu.Unlock()
	if seen || p.Send == nil {
		return
	}
	owner := run.Owner()
	go run.Watch(context.Background(), 300*time.Millisecond, func(s train.State, m *train.Metrics) {
		u := JobUpdate{ID: run.ID, Owner: owner, Kind: kind, State: s.State, Phase: s.Phase, Step: s.Step, Total: s.TotalSteps, Loss: s.Loss, Final: s.Final, Error: s.Error}
		if m != nil {
			u.Step, u.Loss, u.ETA, u.Extra = m.Step, m.Loss, time.Duration(m.ETASeconds*float64(time.Second)), m.Extra
		}
		p.Send(u)
	})
}

// openRun opens a run by id (or, for a local user, by folder too): a confined runner names runs by id alone,
// under its own RunsDir.
func (p *ProcessJobs) openRun(id string) (*train.Run, error) {
	if p.Confine != nil {
		if err := checkRunID(id); err != nil {
			return nil, err
		}
		run, err := train.OpenRun(p.RunsDir, filepath.Join(p.RunsDir, id))
		if err != nil {
			return nil, fmt.Errorf("no job %s of yours: /jobs lists them", id)
		}
		return run, nil
	}
	return train.OpenRun(p.RunsDir, id)
}

// ModelDir implements JobRunner for any run in RunsDir, started here or not.
func (p *ProcessJobs) ModelDir(ref string) (string, error) {
	id, stepText, atStep := strings.Cut(ref, "@")
	run, err := p.openRun(id)
	if err != nil {
		return "", err
	}
	if atStep {
		step, err := strconv.Atoi(stepText)
		if err != nil {
			return "", fmt.Errorf("/load %s: the step after @ is a number (/load %s@200)", ref, id)
		}
		ckpt, err := train.CheckpointDir(run.Dir, step)
		if err != nil {
			return "", err
		}
		return train.CheckpointModel(p.RT, ckpt)
	}
	st, err := run.ReadState()
	if err != nil {
		return "", err
	}
	if st.Final == "" {
		steps, _ := train.Checkpoints(run.Dir)
		return "", fmt.Errorf("job %s has no final weights (%s); its checkpoints load as /load %s@STEP, steps %v", id, st.State, id, steps)
	}
	return st.Final, nil
}

// Cancel implements JobRunner for any run in RunsDir (the owner's own, when there is an Owner).
func (p *ProcessJobs) Cancel(id string) error {
	run, err := p.openRun(id)
	if err != nil {
		return err
	}
	if owner := run.Owner(); p.Owner != "" && owner != p.Owner {
		if owner == "" {
			owner = "someone on the machine itself"
		}
		return fmt.Errorf("job %s was started by %s: you may cancel only your own jobs", id, owner)
	}
	return run.RequestCancel()
}
