package train

import (
	"math/rand/v2"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
)

// BenchSFTStep times keel's SFT step (forward, loss, backward, clipping, AdamW) on a random model of cfg with
// random token batches, returning training tokens per second over steps (after one warm-up step).
func BenchSFTStep(rt *torch.Runtime, cfg *model.Config, batch, seq, steps int) (float64, error) {
	m, err := model.NewTrainable(rt, cfg, model.Options{}, 42) // the reference draws the same distributions
	if err != nil {
		return 0, err
	}
	defer m.Close()
	m.Training = true
	ps := rt.NewScope()
	params := make([]torch.Tensor, len(m.Names))
	for i, p := range m.Names {
		ps.SetRequiresGrad(p.Tensor, true)
		params[i] = p.Tensor
	}
	err = ps.Err()
	ps.Close()
	if err != nil {
		return 0, err
	}
	opt, err := NewAdamW(rt, m.Names, torch.AdamWConfig{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8})
	if err != nil {
		return 0, err
	}
	defer opt.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	step := func() error {
		b := make([]Example, batch)
		for i := range b {
			b[i].IDs = make([]int, seq+1)
			b[i].Loss = make([]bool, seq+1)
			for j := range b[i].IDs {
				b[i].IDs[j] = 3 + rng.IntN(cfg.VocabSize-3)
				b[i].Loss[j] = true
			}
		}
		s := rt.NewScope()
		s.Backward(batchLoss(s, m, b))
		s.ClipGradNorm(params, 1.0)
		err := s.Err()
		s.Close()
		if err != nil {
			return err
		}
		if err := opt.Update(1e-3); err != nil {
			return err
		}
		return opt.ZeroGrad()
	}
	if err := step(); err != nil {
		return 0, err
	}
	t0 := time.Now()
	for i := 0; i < steps; i++ {
		if err := step(); err != nil {
			return 0, err
		}
	}
	return float64(steps*batch*seq) / time.Since(t0).Seconds(), nil
}
