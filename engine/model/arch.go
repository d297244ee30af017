package model

import (
	"fmt"
	"math"
)

// Spec says how one architecture's decoder differs from the shared one (decoder.go). Each architecture file
// turns its config.json into a Spec.
type Spec struct {
	QKVBias       bool    // Qwen2: biases on q, k and v
	OBias         bool    // attention_bias on Llama-style models: a bias on o as well
	QKNorm        bool    // Qwen3: RMSNorm over head_dim on q and k before RoPE
	SandwichNorms bool    // Gemma2: norms after attention and after the MLP as well as before
	NormOffset    float64 // Gemma: RMSNorm weight is (1 + w), applied in float32
	EmbedScale    float64 // Gemma: embeddings times sqrt(hidden_size); 0 = none
	Act           string  // MLP gate activation: silu or gelu_tanh
	AttnScale     float64 // multiplier of q.k
	AttnSoftcap   float64 // Gemma2: cap*tanh(scores/cap); 0 = none
	FinalSoftcap  float64 // Gemma2: the same on the logits
	SlidingWindow int     // keys further back than this many positions are masked on sliding layers; 0 = none
	Sliding       []bool  // per layer: does the sliding window apply
	Tied          bool    // lm_head shares embed_tokens
}

type specBuilder func(c *Config) (Spec, error)

// architectures maps config.json's "architectures" name to its file's Spec builder.
var architectures = map[string]specBuilder{
	"LlamaForCausalLM":   llamaSpec,
	"MistralForCausalLM": mistralSpec,
	"Qwen2ForCausalLM":   qwen2Spec,
	"Qwen3ForCausalLM":   qwen3Spec,
	"Gemma2ForCausalLM":  gemma2Spec,
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
