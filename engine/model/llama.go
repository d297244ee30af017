package model

// LlamaForCausalLM: pre-norm decoder, RMSNorm, SwiGLU MLP, rotary embeddings (with optional "llama3" or
// "linear" rope_scaling, handled in rope.go), grouped-query attention, untied lm_head unless configured.
func llamaSpec(c *Config) (Spec, error) {
	s, err := baseSpec(c, false)
	s.QKVBias, s.OBias = c.AttentionBias, c.AttentionBias
	return s, err
}
