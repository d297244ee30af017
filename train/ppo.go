package train

import (
	"math"

	"github.com/keel-lab/keel/engine/torch"
)

// PPO-max's pieces (Zheng et al. 2023), under TRL's option names where there is one.

// KLRewards are a response's per-token rewards: -kl_coef * (log pi_old - log pi_ref) at every token, with the
// sequence's score added on the last one.
func KLRewards(logpOld, logpRef []float64, score, klCoef float64) []float64 {
	r := make([]float64, len(logpOld))
	for t := range r {
		r[t] = -klCoef * (logpOld[t] - logpRef[t])
	}
	if len(r) > 0 {
		r[len(r)-1] += score
	}
	return r
}

// GAE is generalised advantage estimation over one response: delta_t = r_t + gamma V_{t+1} - V_t,
// A_t = delta_t + gamma lam A_{t+1}, with V after the last token 0; returns = A + V.
func GAE(rewards, values []float64, gamma, lam float64) (advantages, returns []float64) {
	n := len(rewards)
	advantages, returns = make([]float64, n), make([]float64, n)
	next, nextV := 0.0, 0.0
	for t := n - 1; t >= 0; t-- {
		delta := rewards[t] + gamma*nextV - values[t]
		next = delta + gamma*lam*next
		advantages[t], returns[t] = next, next+values[t]
		nextV = values[t]
	}
	return advantages, returns
}

// RunningMoments tracks a reward's running mean and standard deviation (Welford) for PPO-max's normalisation.
type RunningMoments struct {
	n        float64
	mean, m2 float64
}

// Update adds a batch of values.
func (m *RunningMoments) Update(xs ...float64) {
	for _, x := range xs {
		m.n++
		d := x - m.mean
		m.mean += d / m.n
		m.m2 += d * (x - m.mean)
	}
}

// Normalize is clip((x - mean) / std, -clip, clip) under the statistics so far (std 1 until there are two).
func (m *RunningMoments) Normalize(x, clip float64) float64 {
	std := 1.0
	if m.n > 1 {
		std = math.Sqrt(m.m2 / (m.n - 1))
	}
	v := (x - m.mean) / math.Max(std, 1e-8)
	return math.Max(-clip, math.Min(clip, v))
}

// PPOLossConfig is the update's settings.
type PPOLossConfig struct {
	Cliprange      float64 // 0.2
	CliprangeValue float64 // 0.2
	VFCoef         float64 // 1.0 in PPO-max
}

// PPOStats are the update's monitors.
type PPOStats struct {
	PolicyLoss, ValueLoss, ApproxKL, ClipFrac, ValueClipFrac float64
}

// PPOLoss is the clipped surrogate plus vf_coef times the clipped value loss, each averaged over the response
// tokens (mask [B, T]). logp and values carry gradient; logpOld, valuesOld, advantages and returns do not.
func PPOLoss(s *torch.Scope, c PPOLossConfig, logp, logpOld, advantages, values, valuesOld, returns, mask torch.Tensor) (torch.Tensor, PPOStats) {
	n := s.Sum(mask, torch.AllDims, false)
	masked := func(x torch.Tensor) torch.Tensor { return s.Div(s.Sum(s.Mul(x, mask), torch.AllDims, false), n) }
	logRatio := s.Sub(logp, logpOld)
	ratio := s.Exp(logRatio)
	clipped := s.ClampMax(s.ClampMin(ratio, 1-c.Cliprange), 1+c.Cliprange)
	pg := s.Maximum(s.Neg(s.Mul(advantages, ratio)), s.Neg(s.Mul(advantages, clipped)))
	policy := masked(pg)
	vClipped := s.Add(valuesOld, s.ClampMax(s.ClampMin(s.Sub(values, valuesOld), -c.CliprangeValue), c.CliprangeValue))
	vf := s.Maximum(s.Square(s.Sub(values, returns)), s.Square(s.Sub(vClipped, returns)))
	value := s.MulScalar(masked(vf), 0.5)
	loss := s.Add(policy, s.MulScalar(value, c.VFCoef))
	// Monitors, in a scope of their own without gradient (NoGrad applies to a whole scope): approx_kl =
	// Mean((ratio - 1) - log ratio) and the shares of clipped ratios and values.
	ng := s.Runtime().NewScope().NoGrad()
	defer ng.Close()
	cpu := func(x torch.Tensor) torch.Tensor { return ng.To(ng.Detach(x), torch.Float32, torch.CPU) }
	lr, m, dv := cpu(logRatio), cpu(mask), cpu(s.Sub(values, valuesOld))
	count := ng.Sum(m, torch.AllDims, false)
	share := func(x torch.Tensor) float64 {
		return ng.Item(ng.Div(ng.Sum(ng.Mul(x, m), torch.AllDims, false), count))
	}
	over := func(x torch.Tensor, limit float64) torch.Tensor {
		return ng.To(ng.Gt(ng.Abs(x), ng.Full([]int64{1}, limit, torch.Float32, torch.CPU)), torch.Float32, torch.CPU)
	}
	st := PPOStats{PolicyLoss: s.Item(policy), ValueLoss: s.Item(value)}
	st.ApproxKL = share(ng.Sub(ng.AddScalar(ng.Exp(lr), -1), lr))
	st.ClipFrac = share(over(ng.AddScalar(ng.Exp(lr), -1), c.Cliprange))
	st.ValueClipFrac = share(over(dv, c.CliprangeValue))
	if err := ng.Err(); err != nil {
		s.Fail(err)
	}
	return loss, st
}
