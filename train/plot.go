package train

import (
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotLoss draws loss.png from the run's metrics (best effort: a plot failure never fails a run).
func plotLoss(run *Run) {
	ms, err := run.ReadMetrics()
	if err != nil || len(ms) < 2 {
		return
	}
	writeLossPNG(filepath.Join(run.Dir, "loss.png"), ms)
}

func writeLossPNG(path string, ms []Metrics) error {
	p := plot.New()
	p.Title.Text = "loss"
	p.X.Label.Text = "step"
	var train, eval plotter.XYs
	for _, m := range ms {
		train = append(train, plotter.XY{X: float64(m.Step), Y: m.Loss})
		if m.EvalLoss != nil {
			eval = append(eval, plotter.XY{X: float64(m.Step), Y: *m.EvalLoss})
		}
	}
	args := []any{"train", train}
	if len(eval) > 0 {
		args = append(args, "eval", eval)
	}
	if err := plotutil.AddLines(p, args...); err != nil {
		return err
	}
	return p.Save(8*vg.Inch, 4*vg.Inch, path)
}
