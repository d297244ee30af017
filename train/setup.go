package train

import (
	"math"
	"math/rand/v2"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
)

// trainerConfig is what the shared start reads of a trainer's config.
type trainerConfig interface {
	Defaults()
	check() error
	placement() (device, dtype string)
	totalSteps() int
}

func (c *SFTConfig) placement() (string, string)    { return c.Device, c.DType }
func (c *RewardConfig) placement() (string, string) { return c.Device, c.DType }
func (c *ALoLConfig) placement() (string, string)   { return c.Device, c.DType }
func (c *PPOConfig) placement() (string, string)    { return c.Device, c.DType }
func (c *SFTConfig) totalSteps() int                { return c.MaxSteps }
func (c *RewardConfig) totalSteps() int             { return c.MaxSteps }
func (c *ALoLConfig) totalSteps() int               { return c.MaxSteps }
func (c *PPOConfig) totalSteps() int                { return c.MaxSteps }

// beginRun is every trainer's first step: the config's defaults filled and checked, the run marked running (its
// config written unless resuming) and the device read. The caller defers job.end once it has the job.
func beginRun(run *Run, kind string, cfg trainerConfig, opts Options) (job *jobCtl, dev torch.Device, dt torch.DType, err error) {
	cfg.Defaults()
	if err := cfg.check(); err != nil {
		return nil, dev, dt, err
	}
	if job, err = startJob(run, kind, cfg.totalSteps(), cfg, opts); err != nil {
		return nil, dev, dt, err
	}
	device, dtype := cfg.placement()
	if dev, dt, err = deviceDType(device, dtype); err != nil {
		job.end(&err)
		return nil, dev, dt, err
	}
	return job, dev, dt, nil
}

// training is what a trainer's step works on once it is set up: the tensors it updates (named, for checkpoints,
// and as a list, for clipping), the optimizer and the loop.
type training struct {
	trainable []model.NamedTensor
	params    []torch.Tensor
	opt       *AdamW
	loop      *stepLoop
	resumed   string // the checkpoint the run resumed from ("" on a fresh run)
}

// startTraining is the set-up SFT, RM, A-LoL and PPO share once their model is loaded: what trains (LoRA
// adapters when lora is set, else every weight; then extra, such as PPO's critic), gradients on, AdamW, and the
// loop opened on the run (resumed from its last checkpoint when asked). loop brings the run's fields (run, job,
// options, base, seed, steps, cadence); close frees what this made.
func startTraining(rt *torch.Runtime, lm *model.LM, lora *model.LoRAConfig, extra []model.NamedTensor, adam torch.AdamWConfig, loop *stepLoop) (t *training, err error) {
	t = &training{trainable: lm.Names, loop: loop}
	if lora != nil {
		if t.trainable, err = lm.AttachLoRA(*lora, loop.seed); err != nil {
			return nil, err
		}
	}
	if len(extra) > 0 {
		t.trainable = append(append([]model.NamedTensor(nil), t.trainable...), extra...)
	}
	if t.params, err = requireGrad(rt, t.trainable); err != nil {
		return nil, err
	}
	if t.opt, err = NewAdamW(rt, t.trainable, adam); err != nil {
		return nil, err
	}
	loop.rt, loop.trainable, loop.opt = rt, t.trainable, t.opt
	if t.resumed, err = loop.open(); err != nil {
		t.opt.Close()
		return nil, err
	}
	return t, nil
}

func (t *training) close() {
	t.loop.close()
	t.opt.Close()
}

// heldOut splits items into what trains and what is held out, the one rule every trainer uses: a seeded
// shuffle (seed and stream fix it, so a resumed run holds out the same items), then round(fraction x n) held
// out, at least one when fraction > 0, at most most (0: no limit), and never all: one item always trains.
func heldOut[T any](items []T, fraction float64, most int, seed, stream uint64) (train, held []T) {
	n := len(items)
	k := int(math.Round(fraction * float64(n)))
	if fraction > 0 {
		k = max(k, 1)
	}
	if most > 0 {
		k = min(k, most)
	}
	k = max(0, min(k, n-1))
	for i, j := range rand.New(rand.NewPCG(seed, stream)).Perm(n) {
		if i < k {
			held = append(held, items[j])
		} else {
			train = append(train, items[j])
		}
	}
	return train, held
}

// epochIndex is the item at position pos of the data read epoch after epoch, each epoch in a fresh order seeded
// by (seed, epoch): the one batch order of every trainer that goes through its data, a function of the position
// alone so that a resumed run draws what the uninterrupted one would.
func epochIndex(seed uint64, n, pos int) int {
	epoch, i := pos/n, pos%n
	return rand.New(rand.NewPCG(seed, uint64(epoch)+1)).Perm(n)[i]
}

// batchAt is size items from position pos on (epochIndex's order).
func batchAt[T any](items []T, seed uint64, pos, size int) []T {
	out := make([]T, size)
	for j := range out {
		out[j] = items[epochIndex(seed, len(items), pos+j)]
	}
	return out
}
