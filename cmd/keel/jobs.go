package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/train"
)

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
func runJobs(sub string, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	runsDir := fs.String("runs", train.DefaultRunsDir(), "folder of run folders")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	switch sub {
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
			return cli.Usagef("usage: keel jobs %s RUN (a run id or folder)", sub)
		}
		run, err := train.OpenRun(*runsDir, fs.Arg(0))
		if err != nil {
			return err
		}
		switch sub {
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
	return cli.Usagef("unknown jobs command %q: list, watch, cancel, pause or resume", sub)
}
