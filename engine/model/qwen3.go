package model

// Qwen3ForCausalLM: the Llama decoder plus an RMSNorm over head_dim on every query and key head (q_norm,
// k_norm), applied before RoPE; biases only when attention_bias is set.
func qwen3Spec(c *Config) (Spec, error) {
	s, err := baseSpec(c, false)
	if err != nil {
		return s, err
	}
	s.QKNorm = true
	s.QKVBias, s.OBias = c.AttentionBias, c.AttentionBias
	return s, nil
}
