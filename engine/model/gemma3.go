package model

// Gemma3ForCausalLM (and the text model of Gemma3ForConditionalGeneration): Gemma 2's decoder (norms before and
// after attention and the MLP, (1 + w) RMSNorm in float32, embeddings times sqrt(hidden_size), GeGLU, tied
// embeddings, queries scaled by query_pre_attn_scalar^-0.5) with RMSNorm over head_dim on q and k, five sliding
// layers to each global one (every sliding_window_pattern-th layer is global, or layer_types says), and two RoPEs:
// sliding layers rotate with rope_local_base_freq and no scaling, global layers with rope_theta and
// rope_scaling. Soft-capping applies only where config.json sets it (Gemma 3's configs leave it off).
func gemma3Spec(c *Config) (Spec, error) {
	s, err := gemma2Spec(c)
	if err != nil {
		return s, err
	}
	s.QKNorm = true
	s.LocalRopeTheta = c.RopeLocalBaseFreq
	if s.LocalRopeTheta == 0 {
		s.LocalRopeTheta = 10000
	}
	pattern := c.SlidingWindowPattern
	if pattern <= 0 {
		pattern = 6
	}
	for i := range s.Sliding {
		s.Sliding[i] = (i+1)%pattern != 0
		if i < len(c.LayerTypes) {
			s.Sliding[i] = c.LayerTypes[i] == "sliding_attention"
		}
	}
	return s, nil
}

// gemma3TextDefaults are Gemma3TextConfig's defaults: the 4B and larger checkpoints' text_config gives only what
// differs from them.
func gemma3TextDefaults() Config {
	window := 4096
	eps := 1e-6
	return Config{
		ModelType: "gemma3_text", VocabSize: 262208, HiddenSize: 2304, IntermediateSize: 9216, NumHiddenLayers: 26,
		NumAttentionHeads: 8, NumKeyValueHeads: 4, HeadDim: 256, HiddenActivation: "gelu_pytorch_tanh",
		MaxPositionEmbeddings: 131072, RMSNormEps: eps, RopeTheta: 1_000_000, RopeLocalBaseFreq: 10000,
		QueryPreAttnScalar: 256, SlidingWindow: &window, SlidingWindowPattern: 6,
	}
}
