package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/train"
)

// runFlags are the flags every trainer shares: where runs live, resuming, detaching, threads, stopping early.
type runFlags struct {
	detach          *bool
	resume, runsDir *string
	runDir          *string
	threads         *int
	stopAfter       *int
	maxMemory       *int64
}

func (r *runFlags) register(fs *flag.FlagSet) {
	r.detach = fs.Bool("detach", false, "run in the background and print the run id (keel jobs watches it)")
	r.resume = fs.String("resume", "", "continue a run (its folder or id) from its last checkpoint")
	r.runsDir = fs.String("runs", train.DefaultRunsDir(), "folder of run folders")
	r.runDir = fs.String("run-dir", "", "use this existing run folder (set by --detach)")
	r.threads = fs.Int("threads", 0, "libtorch CPU threads (0 = default)")
	r.stopAfter = fs.Int("stop-after", 0, "stop (as if cancelled) after this step, the schedule unchanged (0 = run to --steps)")
	r.maxMemory = fs.Int64("max-memory", 0, "bound the training process's address space in bytes, where the OS allows (0 = none; keel serve sets it for remote users' jobs)")
}

// open finds or makes the run folder; when resuming, the run's saved config.json replaces cfg. A new run needs
// its data file (dataPath, given as dataFlag), checked here before any run folder exists.
func (r *runFlags) open(kind, dataFlag, dataPath string, cfg any) (*train.Run, bool, error) {
	fresh := dataPath != ""
	if _, err := os.Stat(dataPath); fresh && *r.resume == "" && err != nil {
		return nil, false, cli.Usagef("%s %s: no such file: give a JSONL file that exists", dataFlag, dataPath)
	}
	var run *train.Run
	var err error
	resuming := *r.resume != ""
	switch {
	case *r.runDir != "":
		run, err = train.OpenRun(*r.runsDir, *r.runDir)
	case resuming:
		run, err = train.OpenRun(*r.runsDir, *r.resume)
	default:
		if !fresh {
			return nil, false, cli.Usagef("%s FILE is required (--model defaults to keel's embedded model)", dataFlag)
		}
		run, err = train.NewRun(*r.runsDir, kind)
	}
	if err != nil {
		return nil, false, err
	}
	if resuming || (*r.runDir != "" && fileExists(filepath.Join(run.Dir, "config.json")) && !fresh) {
		raw, err := os.ReadFile(filepath.Join(run.Dir, "config.json"))
		if err != nil {
			return nil, false, fmt.Errorf("%s: cannot resume: %v", run.Dir, err)
		}
		if err := json.Unmarshal(raw, cfg); err != nil {
			return nil, false, fmt.Errorf("%s/config.json: %v", run.Dir, err)
		}
		resuming = true
	}
	return run, resuming, nil
}

// defaultModel resolves a run's --model (a folder, a Hugging Face id, persona) and points a fresh run given none
// at the embedded persona model (a resumed run keeps its own).
func (r *runFlags) defaultModel(dir *string) error {
	if *dir == "" && (*r.resume != "" || *r.runDir != "") {
		return nil
	}
	mf := cli.ModelFlags{Dir: *dir}
	if err := mf.Resolve(); err != nil {
		return err
	}
	*dir = mf.Dir
	return nil
}

// start resolves the run's --model and opens (or resumes) its run folder.
func (r *runFlags) start(kind, dataFlag, dataPath string, modelDir *string, cfg any) (*train.Run, bool, error) {
	if err := r.defaultModel(modelDir); err != nil {
		return nil, false, err
	}
	return r.open(kind, dataFlag, dataPath, cfg)
}

// launch starts the run in the background (--detach) or runs it here.
func (r *runFlags) launch(kind string, args []string, run *train.Run, steps int, stdout io.Writer, resuming bool, trainer func(ctx context.Context, rt *torch.Runtime, opts train.Options) error) error {
	if *r.detach {
		return detachTraining(run, kind, args, stdout)
	}
	return r.execute(kind, run, steps, stdout, trainer, resuming)
}

// execute runs a trainer in this process with a progress display, Ctrl-C as cancellation and --stop-after.
func (r *runFlags) execute(kind string, run *train.Run, steps int, stdout io.Writer, trainer func(ctx context.Context, rt *torch.Runtime, opts train.Options) error, resuming bool) error {
	if *r.maxMemory > 0 {
		lim := syscall.Rlimit{Cur: uint64(*r.maxMemory), Max: uint64(*r.maxMemory)}
		if err := syscall.Setrlimit(syscall.RLIMIT_AS, &lim); err != nil {
			return fmt.Errorf("--max-memory %d: %w", *r.maxMemory, err)
		}
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	if *r.threads > 0 {
		rt.SetNumThreads(*r.threads)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	progress := newProgress(stdout, steps)
	fmt.Fprintf(stdout, "run %s (%s)\n", run.ID, run.Dir)
	ctx, stopEarly := context.WithCancel(ctx)
	defer stopEarly()
	hook := func(m *train.Metrics) {
		progress.update(m)
		if *r.stopAfter > 0 && m.Step >= *r.stopAfter {
			stopEarly()
		}
	}
	err = trainer(ctx, rt, train.Options{Resume: resuming, Log: stdout, OnMetrics: hook})
	progress.done()
	if err != nil {
		return fmt.Errorf("run %s: %w", run.ID, err)
	}
	st, _ := run.ReadState()
	if st.State == train.Cancelled {
		fmt.Fprintf(stdout, "cancelled at step %d; continue with: keel train %s --resume %s\n", st.Step, kind, run.Dir)
	}
	return nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// detachTraining starts this command again in the background (train.Detach) and prints the run id.
func detachTraining(run *train.Run, kind string, args []string, stdout io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := train.Detach(exe, run, kind, args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, run.ID)
	return nil
}
