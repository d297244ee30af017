package model

// MistralForCausalLM: the Llama decoder with a sliding attention window on every layer when sliding_window is
// set (null in recent releases, which makes it exactly Llama).
func mistralSpec(c *Config) (Spec, error) {
	s, err := baseSpec(c, false)
	if err != nil {
		return s, err
	}
	s.slideFromConfig(c)
	return s, nil
}
