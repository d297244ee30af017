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
	"strings"
	"syscall"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/train"
)

func runTrain(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "sft":
			return runTrainSFT(args[1:], stdout, stderr)
		case "alol":
			return runTrainALoL(args[1:], stdout, stderr)
		case "ppo":
			return runTrainPPO(args[1:], stdout, stderr)
		case "rm":
			return runTrainRM(args[1:], stdout, stderr)
		}
	}
	return usageError{fmt.Errorf("usage: keel train sft|alol|ppo|rm --model DIR --data FILE.jsonl (ppo: --prompts FILE.jsonl) [flags]")}
}

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
		return nil, false, usageError{fmt.Errorf("%s %s: no such file: give a JSONL file that exists", dataFlag, dataPath)}
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
			return nil, false, usageError{fmt.Errorf("%s FILE is required (--model defaults to keel's embedded model)", dataFlag)}
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

// defaultModel points a fresh run given no --model at the embedded persona model (a resumed run keeps its own).
func (r *runFlags) defaultModel(dir *string) error {
	if *dir != "" || *r.resume != "" || *r.runDir != "" {
		return nil
	}
	var mf modelFlags
	if err := mf.resolve(); err != nil {
		return err
	}
	*dir = mf.dir
	return nil
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

// loraFlags are the LoRA settings shared by the trainers.
type loraFlags struct {
	rank           *int
	alpha, dropout *float64
	targets        *string
}

func (l *loraFlags) register(fs *flag.FlagSet) {
	l.rank = fs.Int("lora", 0, "LoRA rank (0 = full fine-tune)")
	l.alpha = fs.Float64("lora-alpha", 0, "LoRA alpha (default: the rank)")
	l.dropout = fs.Float64("lora-dropout", 0, "LoRA dropout")
	l.targets = fs.String("lora-targets", "q,k,v,o,gate,up,down", "LoRA target modules")
}

func (l *loraFlags) config() *model.LoRAConfig {
	if *l.rank <= 0 {
		return nil
	}
	return &model.LoRAConfig{R: *l.rank, Alpha: *l.alpha, Dropout: *l.dropout, TargetModules: strings.Split(*l.targets, ",")}
}

func runTrainSFT(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("train sft", stderr)
	c := train.DefaultSFTConfig() // the flags show the config's own defaults
	fs.StringVar(&c.ModelNameOrPath, "model", "", "model folder to fine-tune")
	fs.StringVar(&c.DatasetPath, "data", "", "JSONL of {\"messages\": [...]} or {\"text\": ...} lines, or a .txt file")
	fs.Float64Var(&c.LearningRate, "lr", c.LearningRate, "peak learning rate")
	fs.IntVar(&c.MaxSteps, "steps", c.MaxSteps, "optimizer steps")
	fs.IntVar(&c.PerDeviceTrainBatchSize, "batch", c.PerDeviceTrainBatchSize, "sequences per micro-batch")
	fs.IntVar(&c.GradientAccumulationSteps, "accum", c.GradientAccumulationSteps, "micro-batches per step")
	fs.Float64Var(&c.WarmupRatio, "warmup", c.WarmupRatio, "fraction of steps of linear warmup")
	fs.StringVar(&c.LRSchedulerType, "schedule", c.LRSchedulerType, "cosine, linear or constant")
	fs.Float64Var(&c.MaxGradNorm, "clip", c.MaxGradNorm, "global gradient-norm clip")
	fs.Float64Var(&c.WeightDecay, "weight-decay", c.WeightDecay, "AdamW weight decay")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed (data order, eval split, dropout)")
	fs.IntVar(&c.MaxSeqLength, "seq-len", c.MaxSeqLength, "packed sequence length")
	fs.Float64Var(&c.EvalFraction, "eval-fraction", c.EvalFraction, "held-out fraction of examples")
	fs.IntVar(&c.EvalSteps, "eval-every", c.EvalSteps, "steps between eval-loss measurements")
	fs.IntVar(&c.SaveSteps, "save-every", c.SaveSteps, "steps between checkpoints")
	fs.IntVar(&c.SaveTotalLimit, "keep", c.SaveTotalLimit, "checkpoints kept")
	fs.StringVar(&c.Device, "device", c.Device, "cpu, cuda or cuda:N")
	fs.StringVar(&c.DType, "dtype", c.DType, "f32, f16 or bf16")
	fs.BoolVar(&c.BF16, "bf16", c.BF16, "bfloat16 autocast for the forward pass (mixed precision; f32 weights)")
	var lora loraFlags
	lora.register(fs)
	var rf runFlags
	rf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c.LoRA = lora.config()
	if err := rf.defaultModel(&c.ModelNameOrPath); err != nil {
		return err
	}
	run, resuming, err := rf.open("sft", "--data", c.DatasetPath, &c)
	if err != nil {
		return err
	}
	return rf.launch("sft", args, run, c.MaxSteps, stdout, resuming, func(ctx context.Context, rt *torch.Runtime, opts train.Options) error {
		return train.RunSFT(ctx, rt, run, c, opts)
	})
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

// progress draws a bar on a terminal and plain lines otherwise.
type progress struct {
	w     io.Writer
	total int
	tty   bool
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, total: total}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) update(m *train.Metrics) {
	eval := ""
	if m.EvalLoss != nil {
		eval = fmt.Sprintf(" eval %.4f", *m.EvalLoss)
	}
	if !p.tty {
		fmt.Fprintf(p.w, "step %d/%d loss %.4f%s lr %.2e grad %.3f %.0f tok/s eta %s\n", m.Step, p.total, m.Loss, eval, m.LR, m.GradNorm, m.TokensPerSec, time.Duration(m.ETASeconds*float64(time.Second)).Round(time.Second))
		return
	}
	width := 30
	filled := width * m.Step / max(p.total, 1)
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d loss %.4f%s %.0f tok/s eta %s   ", strings.Repeat("#", filled), strings.Repeat(".", width-filled), m.Step, p.total, m.Loss, eval, m.TokensPerSec, time.Duration(m.ETASeconds*float64(time.Second)).Round(time.Second))
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

// runJobs: keel jobs list | watch RUN | cancel RUN | pause RUN | resume RUN
func runJobs(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{fmt.Errorf("usage: keel jobs list|watch RUN|cancel RUN|pause RUN|resume RUN")}
	}
	fs := newFlags("jobs "+args[0], stderr)
	runsDir := fs.String("runs", train.DefaultRunsDir(), "folder of run folders")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "list":
		states, err := train.ListRuns(*runsDir)
		if err != nil {
			return err
		}
		if len(states) == 0 {
			fmt.Fprintf(stdout, "no runs in %s\n", *runsDir)
			return nil
		}
		fmt.Fprintf(stdout, "%-34s %-10s %-11s %-8s %s\n", "ID", "KIND", "STATE", "LOSS", "STEP")
		for _, s := range states {
			fmt.Fprintf(stdout, "%-34s %-10s %-11s %-8.4f %d/%d\n", s.ID, s.Kind, s.State, s.Loss, s.Step, s.TotalSteps)
		}
		return nil
	case "watch", "cancel", "pause", "resume":
		if fs.NArg() != 1 {
			return usageError{fmt.Errorf("usage: keel jobs %s RUN (a run id or folder)", args[0])}
		}
		run, err := train.OpenRun(*runsDir, fs.Arg(0))
		if err != nil {
			return err
		}
		switch args[0] {
		case "cancel":
			if err := run.RequestCancel(); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "asked %s to stop (it saves a checkpoint first)\n", run.ID)
			return nil
		case "pause":
			if err := run.RequestPause(); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "asked %s to pause before its next step (it keeps the model loaded; keel jobs resume %s)\n", run.ID, run.ID)
			return nil
		case "resume":
			if err := run.RequestResume(); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s resumes\n", run.ID)
			return nil
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		st, _ := run.ReadState()
		p := newProgress(stdout, st.TotalSteps)
		final, err := run.Watch(ctx, 300*time.Millisecond, func(s train.State, m *train.Metrics) {
			if m != nil {
				p.update(m)
			} else if !p.tty {
				fmt.Fprintf(stdout, "state %s\n", s.State)
			}
		})
		p.done()
		if err != nil && ctx.Err() == nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s at step %d/%d %s\n", run.ID, final.State, final.Step, final.TotalSteps, final.Error)
		return nil
	}
	return usageError{fmt.Errorf("unknown jobs command %q: list, watch, cancel, pause or resume", args[0])}
}
