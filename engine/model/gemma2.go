package model

import "math"

// Gemma2ForCausalLM: norms before and after both attention and the MLP, RMSNorm with (1 + w) in float32,
// embeddings scaled by sqrt(hidden_size) (rounded to the model dtype), attention scaled by
// query_pre_attn_scalar^-0.5, tanh soft-capping of attention logits and final logits, a sliding window on the
// even layers (0, 2, ...), GeGLU with the tanh gelu, tied embeddings.
func gemma2Spec(c *Config) (Spec, error) {
	s, err := baseSpec(c, true)
	if err != nil {
		return s, err
	}
	if c.HiddenActivation == "" && c.HiddenAct == "" {
		s.Act = "gelu_tanh"
	}
	s.SandwichNorms = true
	s.NormOffset = 1
	s.EmbedScale = math.Sqrt(float64(c.HiddenSize))
	if c.QueryPreAttnScalar > 0 {
		s.AttnScale = 1 / math.Sqrt(c.QueryPreAttnScalar)
	}
	if c.AttnLogitSoftcapping != nil {
		s.AttnSoftcap = *c.AttnLogitSoftcapping
	}
	if c.FinalLogitSoftcapping != nil {
		s.FinalSoftcap = *c.FinalLogitSoftcapping
	}
	if c.SlidingWindow != nil && *c.SlidingWindow > 0 {
		s.SlidingWindow = *c.SlidingWindow
		for i := range s.Sliding {
			s.Sliding[i] = i%2 == 0
			if i < len(c.LayerTypes) {
				s.Sliding[i] = c.LayerTypes[i] == "sliding_attention"
			}
		}
	}
	return s, nil
}
