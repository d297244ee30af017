package model

import "fmt"

// Qwen2ForCausalLM: the Llama decoder with biases on the q, k and v projections (not on o).
func qwen2Spec(c *Config) (Spec, error) {
	s, err := baseSpec(c, false)
	if err != nil {
		return s, err
	}
	s.QKVBias = true
	if c.UseSlidingWindow != nil && *c.UseSlidingWindow {
		return s, fmt.Errorf("Qwen2 with use_sliding_window=true is not supported (the released checkpoints set it false)")
	}
	return s, nil
}
