package model

// Olmo2ForCausalLM: the Llama decoder with its norms moved after the sublayers (x + norm(attn(x)), then
// x + norm(mlp(x)); no norm before either) and RMSNorm over the whole q and k projections, all heads at once,
// before RoPE.
func olmo2Spec(c *Config) (Spec, error) {
	s, err := baseSpec(c, false)
	if err != nil {
		return s, err
	}
	s.PostNormsOnly = true
	s.QKNormFull = true
	s.QKVBias, s.OBias = c.AttentionBias, c.AttentionBias
	return s, nil
}
