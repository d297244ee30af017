package train

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
)

// ValueConfig is A-LoL's value estimate V_ref(x) under the paper's names: a small head over the frozen
// reference's last-layer prompt states, regressed on the rewards of the reference's own greedy replies.
type ValueConfig struct {
	Heads        int     `json:"value_heads"`         // attention heads of the pooling query (8)
	Dropout      float64 `json:"value_dropout"`       // before and after the pooling (0.1)
	LearningRate float64 `json:"value_learning_rate"` // AdamW; the paper's 1e-5 suits 7B features, the small models here learn at 1e-3
	Epochs       int     `json:"value_epochs"`        // 10; the epoch with the lowest mean training MSE is kept
	BatchSize    int     `json:"value_batch_size"`    // 16
	MaxValue     float64 `json:"max_value"`           // the reward's upper bound: V = sigmoid(.) * max_value
}

// DefaultValueConfig is the paper's head with a learning rate for small models.
func DefaultValueConfig() ValueConfig {
	return ValueConfig{Heads: 8, Dropout: 0.1, LearningRate: 1e-3, Epochs: 10, BatchSize: 16, MaxValue: 1}
}

// ValueHead pools prompt states with one learnable query (multi-head attention), then Linear(hidden, 1), a
// sigmoid and max_value.
type ValueHead struct {
	Config                                            ValueConfig
	Params                                            []model.NamedTensor
	query, wq, bq, wk, bk, wv, bv, wo, bo, wout, bout torch.Tensor
	d                                                 int
	scope                                             *torch.Scope
	rt                                                *torch.Runtime
	dev                                               torch.Device
}

// NewValueHead makes a head for hidden size d with weights drawn from seed (normal, std 0.02; biases 0).
func NewValueHead(rt *torch.Runtime, dev torch.Device, d int, cfg ValueConfig, seed uint64) (*ValueHead, error) {
	if cfg.Heads <= 0 || d%cfg.Heads != 0 {
		return nil, fmt.Errorf("value head: %d heads do not divide hidden size %d", cfg.Heads, d)
	}
	if cfg.MaxValue <= 0 {
		return nil, fmt.Errorf("value head: max_value %v must be positive (the reward's upper bound)", cfg.MaxValue)
	}
	if err := rt.ManualSeed(seed); err != nil {
		return nil, err
	}
	v := &ValueHead{Config: cfg, d: d, scope: rt.NewScope(), rt: rt, dev: dev}
	s := v.scope
	D := int64(d)
	w := func(name string, shape ...int64) torch.Tensor {
		t := s.MulScalar(s.Randn(shape, torch.Float32, dev), 0.02)
		t = s.Detach(t)
		s.SetRequiresGrad(t, true)
		v.Params = append(v.Params, model.NamedTensor{Name: name, Tensor: t})
		return t
	}
	b := func(name string, n int64) torch.Tensor {
		t := s.Zeros([]int64{n}, torch.Float32, dev)
		s.SetRequiresGrad(t, true)
		v.Params = append(v.Params, model.NamedTensor{Name: name, Tensor: t})
		return t
	}
	v.query = w("value.query", 1, 1, D)
	v.wq, v.bq = w("value.attn.q.weight", D, D), b("value.attn.q.bias", D)
	v.wk, v.bk = w("value.attn.k.weight", D, D), b("value.attn.k.bias", D)
	v.wv, v.bv = w("value.attn.v.weight", D, D), b("value.attn.v.bias", D)
	v.wo, v.bo = w("value.attn.o.weight", D, D), b("value.attn.o.bias", D)
	v.wout, v.bout = w("value.out.weight", 1, D), b("value.out.bias", 1)
	if err := s.Err(); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// Close frees the head's tensors.
func (v *ValueHead) Close() { v.scope.Close() }

// forward maps a padded batch of prompt states [B, T, D] (keep [B, 1, 1, T] true on real tokens) to V [B].
func (v *ValueHead) forward(s *torch.Scope, states, keep torch.Tensor, train bool) torch.Tensor {
	sh := s.Shape(states)
	if sh == nil {
		return torch.Tensor{}
	}
	B, T, D := sh[0], sh[1], sh[2]
	H := int64(v.Config.Heads)
	hd := D / H
	x := s.Dropout(states, v.Config.Dropout, train)
	q := s.Linear(s.Expand(v.query, B, 1, D), v.wq, v.bq)
	heads := func(t torch.Tensor, n int64) torch.Tensor {
		return s.Transpose(s.Reshape(t, B, n, H, hd), 1, 2)
	}
	a := s.Attention(heads(q, 1), heads(s.Linear(x, v.wk, v.bk), T), heads(s.Linear(x, v.wv, v.bv), T), keep, false, 1/math.Sqrt(float64(hd)), 0)
	pooled := s.Linear(s.Reshape(s.Transpose(a, 1, 2), B, 1, D), v.wo, v.bo)
	pooled = s.Dropout(pooled, v.Config.Dropout, train)
	out := s.Sigmoid(s.Linear(pooled, v.wout, v.bout)) // [B, 1, 1]
	return s.MulScalar(s.Reshape(out, B), v.Config.MaxValue)
}

// batch pads prompt states (each row-major [T_i][D]) into [B, T, D] with its key mask.
func (v *ValueHead) batch(s *torch.Scope, states [][]float32) (torch.Tensor, torch.Tensor) {
	T := 0
	for _, st := range states {
		T = max(T, len(st)/v.d)
	}
	flat := make([]float32, len(states)*T*v.d)
	keep := make([]bool, len(states)*T)
	for b, st := range states {
		copy(flat[b*T*v.d:], st)
		for t := 0; t < len(st)/v.d; t++ {
			keep[b*T+t] = true
		}
	}
	B := int64(len(states))
	return s.FromData(flat, torch.Float32, []int64{B, int64(T), int64(v.d)}, v.dev), s.FromData(keep, torch.Bool, []int64{B, 1, 1, int64(T)}, v.dev)
}

// Predict returns V for each prompt's states (no dropout, no gradient).
func (v *ValueHead) Predict(states [][]float32) ([]float64, error) {
	out := make([]float64, 0, len(states))
	for i := 0; i < len(states); i += 64 {
		s := v.rt.NewScope().NoGrad()
		st, keep := v.batch(s, states[i:min(i+64, len(states))])
		vals := s.Float32s(v.forward(s, st, keep, false))
		err := s.Err()
		s.Close()
		if err != nil {
			return nil, fmt.Errorf("value head: %w", err)
		}
		for _, x := range vals {
			out = append(out, float64(x))
		}
	}
	return out, nil
}

// Fit regresses V on targets (MSE, AdamW, minibatches in a seeded order) for the configured epochs and keeps the
// weights of the epoch with the lowest mean training MSE. It returns each epoch's mean MSE.
func (v *ValueHead) Fit(states [][]float32, targets []float64, seed uint64) ([]float64, error) {
	if len(states) != len(targets) || len(states) == 0 {
		return nil, fmt.Errorf("value head: %d prompts for %d targets", len(states), len(targets))
	}
	opt, err := NewAdamW(v.rt, v.Params, torch.AdamWConfig{LR: v.Config.LearningRate, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01})
	if err != nil {
		return nil, err
	}
	defer opt.Close()
	best := math.Inf(1)
	bestWeights := v.rt.NewScope()
	defer bestWeights.Close()
	var saved []torch.Tensor
	var losses []float64
	rng := rand.New(rand.NewPCG(seed, 0x7a1))
	for epoch := 0; epoch < v.Config.Epochs; epoch++ {
		order := rng.Perm(len(states))
		var sum float64
		for i := 0; i < len(order); i += v.Config.BatchSize {
			idx := order[i:min(i+v.Config.BatchSize, len(order))]
			rows := make([][]float32, len(idx))
			tgt := make([]float32, len(idx))
			for j, k := range idx {
				rows[j], tgt[j] = states[k], float32(targets[k])
			}
			s := v.rt.NewScope()
			st, keep := v.batch(s, rows)
			diff := s.Sub(v.forward(s, st, keep, true), s.FromData(tgt, torch.Float32, []int64{int64(len(idx))}, v.dev))
			loss := s.Mean(s.Square(diff), torch.AllDims, false)
			s.Backward(loss)
			l := s.Item(loss)
			err := s.Err()
			s.Close()
			if err == nil {
				err = opt.Update(v.Config.LearningRate)
			}
			if err == nil {
				err = opt.ZeroGrad()
			}
			if err != nil {
				return losses, fmt.Errorf("value head, epoch %d: %w", epoch+1, err)
			}
			sum += l * float64(len(idx))
		}
		mse := sum / float64(len(states))
		losses = append(losses, mse)
		if mse < best {
			best = mse
			saved = saved[:0]
			for _, p := range v.Params {
				saved = append(saved, bestWeights.Clone(bestWeights.Detach(p.Tensor)))
			}
		}
	}
	s := v.rt.NewScope().NoGrad()
	defer s.Close()
	for i, p := range v.Params {
		s.CopyInto(p.Tensor, saved[i])
	}
	return losses, s.Err()
}
