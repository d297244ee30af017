package train

import (
	"fmt"
	"slices"

	"github.com/keel-lab/keel/engine/torch"
)

// ALoLAlgorithms are the offline policy-gradient variants of Baheti et al. (ICLR 2024): the whole response is one
// action, the frozen reference is the starting model, and importance weights carry no gradient.
var ALoLAlgorithms = []string{"nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl"}

// ALoLLossConfig holds the loss's settings under the paper's names.
type ALoLLossConfig struct {
	Algorithm string
	PPOClip   float64 // eps: importance weights are clamped to [1-eps, 1+eps] (0.9 by default); 0 for a_lol_kl
	KLBeta    float64 // a_lol_kl: weight of log pi_theta(y|x) - log pi_ref(y|x)
}

// DefaultALoLLoss is the paper's setting for an algorithm.
func DefaultALoLLoss(alg string) ALoLLossConfig {
	c := ALoLLossConfig{Algorithm: alg, PPOClip: 0.9}
	if alg == "a_lol_kl" {
		c.PPOClip, c.KLBeta = 0, 0.1
	}
	return c
}

// Check validates the settings in one line naming the flag.
func (c ALoLLossConfig) Check() error {
	if !slices.Contains(ALoLAlgorithms, c.Algorithm) {
		return fmt.Errorf("--algorithm %q: give one of %v", c.Algorithm, ALoLAlgorithms)
	}
	if c.Algorithm == "a_lol_kl" && c.PPOClip != 0 {
		return fmt.Errorf("--ppo-clip %g: a_lol_kl takes no clamp, give 0", c.PPOClip)
	}
	if c.Algorithm != "a_lol_kl" && c.Algorithm != "nll" && c.Algorithm != "wbc" && c.Algorithm != "a_lol_ref_free" && (c.PPOClip <= 0 || c.PPOClip >= 1) {
		return fmt.Errorf("--ppo-clip %g: give the clamp half-width in (0, 1), e.g. 0.9", c.PPOClip)
	}
	return nil
}

// ALoLLoss is the batch loss (the mean over examples of each example's loss) from per-token log-probabilities of
// the response tokens: logp [B, T] under the policy (with gradient), logpRef [B, T] under the frozen reference,
// mask [B, T] (1 on response tokens), reward [B] and advantage [B] (R - V_ref(x); only A+ = max(A, 0) is used).
// NLL is the SUM of the response tokens' negative log-likelihoods, as the paper has it.
func ALoLLoss(s *torch.Scope, c ALoLLossConfig, logp, logpRef, mask, reward, advantage torch.Tensor) torch.Tensor {
	nllTok := s.Neg(s.Mul(logp, mask))           // [B, T]
	nll := s.Sum(nllTok, 1, false)               // [B]
	aPlus := s.ClampMin(advantage, 0)            // [B]
	diff := s.Mul(s.Sub(logp, logpRef), mask)    // log-ratio per token, 0 off the response
	clamp := func(w torch.Tensor) torch.Tensor { // sg(w) clamped to [1-eps, 1+eps]
		return s.ClampMax(s.ClampMin(s.Detach(w), 1-c.PPOClip), 1+c.PPOClip)
	}
	var per torch.Tensor
	switch c.Algorithm {
	case "nll":
		per = nll
	case "wbc":
		per = s.Mul(reward, nll)
	case "r_gold":
		// GOLD's per-token weight: the token's own probability, floored at 0.1, without gradient.
		w := s.ClampMin(s.Exp(s.Detach(logp)), 0.1)
		per = s.Mul(reward, s.Sum(s.Mul(w, nllTok), 1, false))
	case "r_lol":
		per = s.Mul(s.Mul(reward, clamp(s.Exp(s.Sum(diff, 1, false)))), nll)
	case "a_lol":
		per = s.Mul(s.Mul(aPlus, clamp(s.Exp(s.Sum(diff, 1, false)))), nll)
	case "a_lol_ref_free":
		per = s.Mul(aPlus, nll)
	case "a_lol_seq":
		per = s.Mul(aPlus, s.Sum(s.Mul(clamp(s.Exp(diff)), nllTok), 1, false))
	case "a_lol_kl":
		per = s.Add(s.Mul(aPlus, nll), s.MulScalar(s.Sum(diff, 1, false), c.KLBeta))
	default:
		s.Fail(fmt.Errorf("unknown A-LoL algorithm %q", c.Algorithm))
		return torch.Tensor{}
	}
	return s.Mean(per, torch.AllDims, false)
}
