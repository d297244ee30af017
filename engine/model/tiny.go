package model

// TinyConfigs returns one small config per supported architecture, each exercising what makes that
// architecture different (llama3 rope scaling, a sliding window short enough to bite, q/k/v biases, per-head q/k
// norms with an explicit head_dim, Gemma 2's soft-caps and alternating windows, Gemma 3's two RoPEs, OLMo 2's
// norms after the sublayers). Tests and cross-checks against other implementations build random-weight
// checkpoints from them.
func TinyConfigs() map[string]*Config {
	yes, no := true, false
	window := 24
	attnCap, finalCap := 50.0, 30.0
	eos := IntList{2}
	bos := 1
	base := func(arch, modelType string) *Config {
		return &Config{
			Architectures: []string{arch}, ModelType: modelType,
			HiddenSize: 64, IntermediateSize: 160, NumHiddenLayers: 3, NumAttentionHeads: 4, NumKeyValueHeads: 2,
			VocabSize: 320, RMSNormEps: 1e-6, RopeTheta: 10000, MaxPositionEmbeddings: 1024,
			TieWordEmbeddings: &no, BOSTokenID: &bos, EOSTokenID: eos, HiddenAct: "silu",
		}
	}
	llama := base("LlamaForCausalLM", "llama")
	llama.RopeTheta = 500000
	llama.RopeScaling = &RopeScaling{RopeType: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 64}
	llama.RMSNormEps = 1e-5

	mistral := base("MistralForCausalLM", "mistral")
	mistral.SlidingWindow = &window

	qwen2 := base("Qwen2ForCausalLM", "qwen2")
	qwen2.UseSlidingWindow = &no
	qwen2.TieWordEmbeddings = &yes

	qwen3 := base("Qwen3ForCausalLM", "qwen3")
	qwen3.HeadDim = 32

	gemma2 := base("Gemma2ForCausalLM", "gemma2")
	gemma2.NumHiddenLayers = 4
	gemma2.HeadDim = 16
	gemma2.HiddenAct = ""
	gemma2.HiddenActivation = "gelu_pytorch_tanh"
	gemma2.QueryPreAttnScalar = 24
	gemma2.AttnLogitSoftcapping = &attnCap
	gemma2.FinalLogitSoftcapping = &finalCap
	gemma2.SlidingWindow = &window
	gemma2.TieWordEmbeddings = &yes

	// Gemma 3: seven layers so the global layer (the sixth) has sliding ones on both sides, linear RoPE scaling
	// on the global layers only, a local RoPE base of its own.
	gemma3 := base("Gemma3ForCausalLM", "gemma3_text")
	gemma3.NumHiddenLayers = 7
	gemma3.HeadDim = 16
	gemma3.HiddenAct = ""
	gemma3.HiddenActivation = "gelu_pytorch_tanh"
	gemma3.QueryPreAttnScalar = 24
	gemma3.SlidingWindow = &window
	gemma3.SlidingWindowPattern = 6
	gemma3.RopeTheta = 1_000_000
	gemma3.RopeLocalBaseFreq = 10000
	gemma3.RopeScaling = &RopeScaling{RopeType: "linear", Factor: 8}
	gemma3.TieWordEmbeddings = &yes

	olmo2 := base("Olmo2ForCausalLM", "olmo2")
	olmo2.RopeTheta = 500000

	return map[string]*Config{"llama": llama, "mistral": mistral, "qwen2": qwen2, "qwen3": qwen3, "gemma2": gemma2,
		"gemma3": gemma3, "olmo2": olmo2}
}
