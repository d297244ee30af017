package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/train"
	"github.com/keel-lab/keel/workbench"
)

// chatFlags are the flags of both chat front ends (the TUI and the line REPL): the model, its axis, the
// recording, the runs folder and the starting sampling.
type chatFlags struct {
	mf         cli.ModelFlags
	axis       string
	ignoreHash bool
	system     string
	record     string
	noRecord   bool
	runs       string
	sampling   workbench.Sampling
}

// register declares the flags, their defaults taken from s (the workbench's, or the config file's).
func (c *chatFlags) register(fs *flag.FlagSet, s workbench.Sampling) {
	c.mf.Register(fs)
	fs.StringVar(&c.axis, "axis", "", "an extraction folder (axis, calibration) or an axis file; default: the model's own axis/ (the embedded model has one)")
	fs.BoolVar(&c.ignoreHash, "ignore-hash", false, "accept an axis made for other weights of the same shape (a fine-tune)")
	fs.StringVar(&c.system, "system", "", "system prompt")
	fs.StringVar(&c.record, "record", "", "session file to write (default: a new file in the sessions folder)")
	fs.BoolVar(&c.noRecord, "no-record", false, "do not record this chat")
	fs.StringVar(&c.runs, "runs", train.DefaultRunsDir(), "where background fine-tunes write their runs")
	c.sampling = s
	fs.Float64Var(&c.sampling.Temperature, "temperature", s.Temperature, "sampling temperature (0 = greedy)")
	fs.Float64Var(&c.sampling.TopP, "top-p", s.TopP, "nucleus mass")
	fs.IntVar(&c.sampling.MaxTokens, "max-tokens", s.MaxTokens, "tokens per reply at most")
	fs.Uint64Var(&c.sampling.Seed, "seed", s.Seed, "sampling seed")
	fs.IntVar(&c.sampling.TopK, "top-k", s.TopK, "keep the k likeliest tokens (0 = off)")
	fs.Float64Var(&c.sampling.MinP, "min-p", s.MinP, "drop tokens below this fraction of the likeliest's probability (0 = off)")
	fs.Float64Var(&c.sampling.RepetitionPenalty, "repetition-penalty", s.RepetitionPenalty, "penalty on tokens already in the context (1 = off)")
}

// open loads the model and starts a session on it, with the machine's jobs (their updates go to send) and a
// loader for /model, /axis and /load.
func (c *chatFlags) open(term sessions.Term, send func(workbench.JobUpdate)) (*workbench.Session, *workbench.ProcessJobs, error) {
	if err := c.sampling.Check(); err != nil {
		return nil, nil, cli.Usagef("--%w", err)
	}
	rt, lm, err := c.mf.Load()
	if err != nil {
		return nil, nil, err
	}
	if c.axis = cli.AxisPath(c.axis); c.axis == "" {
		c.axis = probes.ModelAxisDir(lm.Dir)
	}
	backendFor := func(lm *model.LM, axis string, s workbench.Sampling, path string) (*workbench.LMBackend, error) {
		return workbench.NewLMBackend(lm, workbench.LMConfig{Device: c.mf.Device, DType: c.mf.DType, AxisPath: axis, IgnoreHash: c.ignoreHash,
			Record: !c.noRecord, RecordPath: path, Version: version, Sampling: s, Term: term})
	}
	b, err := backendFor(lm, c.axis, c.sampling, c.record)
	if err != nil {
		lm.Close()
		return nil, nil, err
	}
	exe, _ := os.Executable()
	jobs := &workbench.ProcessJobs{RT: rt, Exe: exe, Model: lm.Dir, RunsDir: c.runs, Send: send}
	opt := workbench.Options{Sampling: c.sampling, System: c.system, Jobs: jobs,
		Controls: workbench.StartControls(b.Info())}
	// Another model or axis records to a new file (a recording names one model): its header starts from the
	// session's sampling as it is at the switch.
	opt.Load = func(dir, axis string, s workbench.Sampling) (workbench.Backend, error) {
		dir, err := cli.ResolveModel(dir, nil) // /model takes what --model takes: a folder, an id, persona
		if err != nil {
			return nil, err
		}
		next, err := c.mf.LoadDir(rt, dir)
		if err != nil {
			return nil, err
		}
		nb, err := backendFor(next, cli.AxisPath(axis), s, "")
		if err != nil {
			next.Close()
			return nil, err
		}
		jobs.Model = dir
		return nb, nil
	}
	return workbench.New(b, opt), jobs, nil
}

// runChat is the plain line REPL (keel chat with stdin not a terminal): the workbench's session and slash
// commands, one line per user turn; every chat is recorded unless --no-record.
func runChat(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var cf chatFlags
	cf.register(fs, workbench.DefaultSampling())
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	repl := &workbench.REPL{In: os.Stdin, Out: stdout}
	s, jobs, err := cf.open(sessions.Term{Cols: 80, Rows: 24}, repl.JobUpdate)
	if err != nil {
		return err
	}
	repl.Session = s
	if s.Warning != "" {
		fmt.Fprintln(stderr, s.Warning)
	}
	if info := s.Info(); info.Recording != "" {
		fmt.Fprintf(stderr, "recording to %s\n", info.Recording)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	jobs.Sync(ctx)
	err = repl.Run(ctx)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}
