package model

import (
	"fmt"
	"math"
	"strings"
)

// Spec says how one architecture's decoder differs from the shared one (decoder.go). Each architecture file
// turns its config.json into a Spec.
type Spec struct {
	QKVBias       bool    // Qwen2: biases on q, k and v
	OBias         bool    // attention_bias on Llama-style models: a bias on o as well
	QKNorm        bool    // Qwen3, Gemma3: RMSNorm over head_dim on q and k before RoPE
	QKNormFull    bool    // OLMo 2: RMSNorm over the whole q and k projections (every head at once) before RoPE
	SandwichNorms bool    // Gemma2, Gemma3: norms after attention and after the MLP as well as before
	PostNormsOnly bool    // OLMo 2: norms after attention and after the MLP, none before
	NormOffset    float64 // Gemma: RMSNorm weight is (1 + w), applied in float32
	EmbedScale    float64 // Gemma: embeddings times sqrt(hidden_size); 0 = none
	// Act is the MLP gate's activation: silu, gelu or gelu_tanh; gelu_tanh_f16 is gelu_tanh with its input and
	// output rounded through f16, as llama.cpp's CPU GELU computes it, for cross-checks against llama.cpp.
	Act           string
	AttnScale     float64 // multiplier of q.k
	AttnSoftcap   float64 // Gemma2: cap*tanh(scores/cap); 0 = none
	FinalSoftcap  float64 // Gemma2: the same on the logits
	SlidingWindow int     // keys further back than this many positions are masked on sliding layers; 0 = none
	Sliding       []bool  // per layer: does the sliding window apply
	// LocalRopeTheta: sliding layers rotate with this base and no scaling, full layers with rope_theta and
	// rope_scaling (Gemma3's rope_local_base_freq); 0 = one RoPE for every layer.
	LocalRopeTheta float64
	Tied           bool // lm_head shares embed_tokens
}

type specBuilder func(c *Config) (Spec, error)

// architectures maps config.json's "architectures" name to its file's Spec builder.
var architectures = map[string]specBuilder{
	"LlamaForCausalLM":   llamaSpec,
	"MistralForCausalLM": mistralSpec,
	"Qwen2ForCausalLM":   qwen2Spec,
	"Qwen3ForCausalLM":   qwen3Spec,
	"Gemma2ForCausalLM":  gemma2Spec,
	"Gemma3ForCausalLM":  gemma3Spec,
	// The text model of Gemma 3's image-text checkpoints (4B and up): config.json nests it under text_config,
	// the weights under language_model.
	"Gemma3ForConditionalGeneration": gemma3Spec,
	"Olmo2ForCausalLM":               olmo2Spec,
}

// configDefaults are the values transformers' config class gives keys a config.json leaves out, for the
// architectures whose published configs rely on them.
var configDefaults = map[string]func() Config{
	"Gemma3ForCausalLM":              gemma3TextDefaults,
	"Gemma3ForConditionalGeneration": gemma3TextDefaults,
}

// baseSpec is the Llama-family decoder every architecture starts from.
func baseSpec(c *Config, tiedDefault bool) (Spec, error) {
	act, err := activation(c)
	if err != nil {
		return Spec{}, err
	}
	if c.MLPBias {
		return Spec{}, fmt.Errorf("mlp_bias=true is not supported")
	}
	return Spec{
		Act:       act,
		AttnScale: 1 / math.Sqrt(float64(c.HeadDim)),
		Tied:      c.Tied(tiedDefault),
		Sliding:   make([]bool, c.NumHiddenLayers),
	}, nil
}

func activation(c *Config) (string, error) {
	name := c.HiddenActivation
	if name == "" {
		name = c.HiddenAct
	}
	switch name {
	case "", "silu", "swish":
		return "silu", nil
	case "gelu_pytorch_tanh", "gelu_new", "gelu_fast":
		return "gelu_tanh", nil
	case "gelu":
		return "gelu", nil
	}
	return "", fmt.Errorf("hidden activation %q is not supported (silu, gelu, gelu_pytorch_tanh)", name)
}

// slideEvery marks every layer sliding when config.json sets a window (Mistral), or follows layer_types.
func (s *Spec) slideFromConfig(c *Config) {
	if c.SlidingWindow == nil || *c.SlidingWindow <= 0 {
		return
	}
	s.SlidingWindow = *c.SlidingWindow
	for i := range s.Sliding {
		s.Sliding[i] = true
		if i < len(c.LayerTypes) {
			s.Sliding[i] = c.LayerTypes[i] == "sliding_attention"
		}
	}
}

// SpecFor is the Spec of config c's architecture. A *ForSequenceClassification model (a reward or value model)
// is its causal LM's decoder with a score head instead of lm_head.
func SpecFor(c *Config) (Spec, error) {
	build, ok := specBuilderFor(c.Architecture())
	if !ok {
		return Spec{}, fmt.Errorf("unknown architecture %q: keel runs %s", c.Architecture(), strings.Join(Architectures(), ", "))
	}
	return build(c)
}

const classifierSuffix = "ForSequenceClassification"

func specBuilderFor(arch string) (specBuilder, bool) {
	if base, ok := strings.CutSuffix(arch, classifierSuffix); ok && base != "" {
		arch = base + "ForCausalLM"
	}
	b, ok := architectures[arch]
	return b, ok
}

// IsClassifier reports whether the config is a *ForSequenceClassification model.
func (c *Config) IsClassifier() bool { return strings.HasSuffix(c.Architecture(), classifierSuffix) }

// Labels is the number of outputs of a classifier's score head: num_labels, else id2label's size, else
// transformers' default of 2.
func (c *Config) Labels() int {
	switch {
	case c.NumLabels > 0:
		return c.NumLabels
	case len(c.ID2Label) > 0:
		return len(c.ID2Label)
	}
	return 2
}
