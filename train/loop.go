package train

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
)

// stepLoop is the one training loop every trainer runs, top to bottom: it resumes from the run's last
// checkpoint, holds while the run is paused, stops (saving the last whole step) on a cancel, seeds each step
// from (seed, step), logs each step's metrics with tokens/s and ETA to the run, the caller and any watcher,
// checkpoints on the cadence and records progress. A trainer brings its step: its loss on its data.
type stepLoop struct {
	rt        *torch.Runtime
	run       *Run
	job       *jobCtl
	opts      Options
	trainable []model.NamedTensor
	opt       *AdamW
	base      modelBase
	seed      uint64
	steps     int // the last step; a step may lower it (a wall-clock budget spent)
	saveEvery int
	keep      int // checkpoints kept
	// canSave reports whether the weights may be checkpointed now (PPO: not while its collapse monitor counts).
	canSave func() bool
	// saveExtra writes a trainer's own state into a checkpoint (PPO: its running reward statistics).
	saveExtra func(ck string) error

	start int // the step the run resumed after
	mlog  *metricsLog
}

// stepResult is what a step reports: its metrics (the loop adds the step, time, tokens/s and ETA), the tokens
// it trained on, whether to log it, and an error that ends the run once the step is logged (PPO's collapse
// monitor).
type stepResult struct {
	metrics Metrics
	tokens  int
	log     bool
	then    error
}

// errCancelledBeforeUpdate is a step's report that it was cancelled before changing the weights, so the
// previous step may be saved as the run's last checkpoint.
var errCancelledBeforeUpdate = errors.New("cancelled before the step's update")

// open resumes the run when asked (returning the checkpoint it resumed from) and opens the metrics log.
func (l *stepLoop) open() (string, error) {
	if l.canSave == nil {
		l.canSave = func() bool { return true }
	}
	ck := ""
	if l.opts.Resume {
		var err error
		if l.start, ck, err = resumeRun(l.rt, l.run, l.trainable, l.opt, l.base, l.job.logf); err != nil {
			return "", err
		}
	}
	var err error
	l.mlog, err = openMetricsLog(l.run.Dir)
	return ck, err
}

func (l *stepLoop) close() {
	if l.mlog != nil {
		l.mlog.close()
	}
}

func (l *stepLoop) cancelRequested(ctx context.Context) bool {
	return ctx.Err() != nil || l.run.cancelRequested()
}

// save checkpoints the weights as they are after step.
func (l *stepLoop) save(step int, loss float64) error {
	ck, err := saveCheckpoint(l.rt, l.run, step, l.trainable, l.opt, l.base, loss)
	if err != nil {
		return fmt.Errorf("checkpoint at step %d: %w (the previous checkpoint is intact)", step, err)
	}
	if l.saveExtra != nil {
		if err := l.saveExtra(ck); err != nil {
			return err
		}
	}
	l.job.state.Checkpoint = ck
	pruneCheckpoints(l.run.Dir, l.keep)
	return nil
}

// stop ends the run on a cancel after step-1's update, saving it when it is new and may be saved.
func (l *stepLoop) stop(step int) error {
	if step-1 > l.start && l.canSave() {
		l.save(step-1, l.job.state.Loss)
	}
	return errCancelled
}

// drive runs step for every step after the resumed one up to l.steps.
func (l *stepLoop) drive(ctx context.Context, step func(ctx context.Context, n int) (stepResult, error)) error {
	t0 := time.Now()
	tokens := 0
	for n := l.start + 1; n <= l.steps; n++ {
		t0 = t0.Add(l.job.holdWhilePaused(ctx))
		if l.cancelRequested(ctx) {
			return l.stop(n)
		}
		if err := l.rt.ManualSeed(l.seed*1000003 + uint64(n)); err != nil {
			return err
		}
		r, err := step(ctx, n)
		switch {
		case errors.Is(err, errCancelledBeforeUpdate):
			return l.stop(n)
		case err != nil:
			return err
		}
		tokens += r.tokens
		m := r.metrics
		elapsed := time.Since(t0).Seconds()
		m.Step, m.Time, m.TokensPerSec = n, time.Now().UTC(), float64(tokens)/elapsed
		m.ETASeconds = elapsed / float64(n-l.start) * float64(l.steps-n)
		if r.log {
			if err := l.mlog.write(m); err != nil {
				return fmt.Errorf("writing metrics: %w", err)
			}
			if l.opts.OnMetrics != nil {
				l.opts.OnMetrics(&m)
			}
			l.job.emit(Event{Metrics: &m})
		}
		l.job.state.Loss = m.Loss
		if r.then != nil {
			l.mlog.sync()
			return r.then
		}
		if n%l.saveEvery == 0 && n < l.steps && l.canSave() {
			l.mlog.sync()
			if err := l.save(n, m.Loss); err != nil {
				return err
			}
		}
		l.job.progress(n, m.Loss)
	}
	l.mlog.sync()
	return nil
}

// finish exports the trained weights (trainable: the model's own, without a trainer's heads) as final/, plots
// the loss and marks the run done.
func (l *stepLoop) finish(lm *model.LM, trainable []model.NamedTensor) error {
	lm.Training = false
	final, err := exportFinal(l.rt, l.run, lm, trainable, l.base)
	if err != nil {
		return fmt.Errorf("exporting the final weights: %w", err)
	}
	plotLoss(l.run)
	l.job.state.Final = final
	l.job.finish(Done, nil)
	l.job.logf("done: %s", final)
	return nil
}

// deviceDType parses a trainer's device and dtype settings.
func deviceDType(device, dtype string) (torch.Device, torch.DType, error) {
	dev, err := torch.ParseDevice(device)
	if err != nil {
		return dev, 0, err
	}
	dt, err := torch.ParseDType(dtype)
	return dev, dt, err
}
