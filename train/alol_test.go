package train

import (
	"math"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// Each variant's loss and its gradient with respect to the policy's token log-probabilities, against the spec's
// formulas worked out by hand in float64 on a toy batch of two responses (the second one token shorter, and with
// a negative advantage, which A-LoL must ignore).
func TestALoLLossesAndGradientsByHand(t *testing.T) {
	rt := torchtest.Runtime(t)
	logp := [][]float64{{-0.5, -1.0, -2.0}, {-0.1, -3.0, -0.7}}
	logpRef := [][]float64{{-0.7, -0.9, -2.5}, {-0.2, -1.0, -0.7}}
	mask := [][]float64{{1, 1, 1}, {1, 1, 0}}
	reward := []float64{0.8, 0.3}
	adv := []float64{0.5, -0.2}
	const B = 2.0
	clamp := func(x, eps float64) float64 { return math.Min(math.Max(x, 1-eps), 1+eps) }
	// want returns the batch loss and d loss / d logp[b][t] for a variant.
	want := func(alg string, eps, beta float64) (float64, [][]float64) {
		var loss float64
		grad := [][]float64{make([]float64, 3), make([]float64, 3)}
		for b := range logp {
			var nll, sumDiff float64
			for t := range logp[b] {
				nll -= logp[b][t] * mask[b][t]
				sumDiff += (logp[b][t] - logpRef[b][t]) * mask[b][t]
			}
			aPlus := math.Max(adv[b], 0)
			rho := clamp(math.Exp(sumDiff), eps)
			for t := range logp[b] {
				m := mask[b][t]
				var per, g float64 // this token's share of the example's loss, and its gradient
				nllT := -logp[b][t] * m
				switch alg {
				case "nll":
					per, g = nllT, -m
				case "wbc":
					per, g = reward[b]*nllT, -reward[b]*m
				case "r_gold":
					w := math.Max(math.Exp(logp[b][t]), 0.1)
					per, g = reward[b]*w*nllT, -reward[b]*w*m
				case "r_lol":
					per, g = reward[b]*rho*nllT, -reward[b]*rho*m
				case "a_lol":
					per, g = aPlus*rho*nllT, -aPlus*rho*m
				case "a_lol_ref_free":
					per, g = aPlus*nllT, -aPlus*m
				case "a_lol_seq":
					rt := clamp(math.Exp(logp[b][t]-logpRef[b][t]), eps)
					per, g = aPlus*rt*nllT, -aPlus*rt*m
				case "a_lol_kl":
					per, g = aPlus*nllT+beta*(logp[b][t]-logpRef[b][t])*m, (-aPlus+beta)*m
				}
				loss += per / B
				grad[b][t] = g / B
			}
		}
		return loss, grad
	}
	flat := func(x [][]float64) []float32 {
		var out []float32
		for _, r := range x {
			for _, v := range r {
				out = append(out, float32(v))
			}
		}
		return out
	}
	vec := func(x []float64) []float32 { return flat([][]float64{x}) }
	var cases []ALoLLossConfig
	for _, alg := range ALoLAlgorithms {
		cases = append(cases, DefaultALoLLoss(alg))
		if alg == "a_lol_seq" || alg == "r_lol" || alg == "a_lol" {
			// eps 0.9 leaves every toy ratio unclamped, so a weight that carried gradient would show; eps 0.2
			// clamps some of them.
			c := DefaultALoLLoss(alg)
			c.PPOClip = 0.2
			cases = append(cases, c)
		}
	}
	for _, cfg := range cases {
		alg := cfg.Algorithm
		if err := cfg.Check(); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		s := rt.NewScope()
		lp := s.FromData(flat(logp), torch.Float32, []int64{2, 3}, torch.CPU)
		s.SetRequiresGrad(lp, true)
		loss := ALoLLoss(s, cfg, lp, s.FromData(flat(logpRef), torch.Float32, []int64{2, 3}, torch.CPU),
			s.FromData(flat(mask), torch.Float32, []int64{2, 3}, torch.CPU), s.FromData(vec(reward), torch.Float32, []int64{2}, torch.CPU),
			s.FromData(vec(adv), torch.Float32, []int64{2}, torch.CPU))
		got := s.Item(loss)
		s.Backward(loss)
		grad := s.Float32s(s.Grad(lp))
		if err := s.Err(); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		s.Close()
		wantLoss, wantGrad := want(alg, cfg.PPOClip, cfg.KLBeta)
		if math.Abs(got-wantLoss) > 1e-5 {
			t.Errorf("%s: loss %.7f, by hand %.7f", alg, got, wantLoss)
		}
		for i, g := range flat(wantGrad) {
			if math.Abs(float64(grad[i]-g)) > 1e-5 {
				t.Errorf("%s: d loss / d logp[%d] = %.6f, by hand %.6f", alg, i, grad[i], g)
			}
		}
	}
	// The toy batch's sequence ratios, exp(0.6) = 1.82 and exp(-1.9) = 0.15, lie inside [0.1, 1.9] and outside
	// [0.8, 1.2]: the two eps settings test the unclamped and the clamped paths.
}

func TestALoLConfigBadInput(t *testing.T) {
	for cfg, want := range map[ALoLLossConfig]string{
		{Algorithm: "ppo"}:                    "--algorithm",
		{Algorithm: "a_lol_kl", PPOClip: 0.9}: "no clamp",
		{Algorithm: "a_lol", PPOClip: 1.5}:    "--ppo-clip",
	} {
		if err := cfg.Check(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v, want %q", cfg, err, want)
		}
	}
}
