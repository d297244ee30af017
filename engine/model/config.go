// Package model runs Hugging Face causal language models on libtorch: configs, weights, one file per
// architecture over a shared decoder, residual-stream hooks, KV-cached generation and teacher forcing.
package model

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/keel-lab/keel/engine/safetensors"
)

// RopeScaling is config.json's rope_scaling.
type RopeScaling struct {
	RopeType                      string  `json:"rope_type,omitempty"`
	Type                          string  `json:"type,omitempty"` // older spelling of rope_type
	Factor                        float64 `json:"factor,omitempty"`
	LowFreqFactor                 float64 `json:"low_freq_factor,omitempty"`
	HighFreqFactor                float64 `json:"high_freq_factor,omitempty"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings,omitempty"`
}

// Kind is the scaling type whichever key names it.
func (r *RopeScaling) Kind() string {
	if r == nil {
		return "default"
	}
	if r.RopeType != "" {
		return r.RopeType
	}
	if r.Type != "" {
		return r.Type
	}
	return "default"
}

// IntList reads a JSON int or list of ints (eos_token_id takes both forms).
type IntList []int

func (l *IntList) UnmarshalJSON(b []byte) error {
	var one int
	if err := json.Unmarshal(b, &one); err == nil {
		*l = IntList{one}
		return nil
	}
	var many []int
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want an int or a list of ints, got %s", b)
	}
	*l = many
	return nil
}

// Config is the subset of config.json the supported architectures use.
type Config struct {
	Architectures     []string     `json:"architectures"`
	ModelType         string       `json:"model_type,omitempty"`
	HiddenSize        int          `json:"hidden_size"`
	IntermediateSize  int          `json:"intermediate_size"`
	NumHiddenLayers   int          `json:"num_hidden_layers"`
	NumAttentionHeads int          `json:"num_attention_heads"`
	NumKeyValueHeads  int          `json:"num_key_value_heads"`
	HeadDim           int          `json:"head_dim,omitempty"`
	VocabSize         int          `json:"vocab_size"`
	RMSNormEps        float64      `json:"rms_norm_eps"`
	RopeTheta         float64      `json:"rope_theta"`
	RopeScaling       *RopeScaling `json:"rope_scaling,omitempty"`
	// RopeParameters is transformers 5's spelling: rope_theta and the scaling in one dict (or one per layer type).
	RopeParameters        json.RawMessage `json:"rope_parameters,omitempty"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	TieWordEmbeddings     *bool           `json:"tie_word_embeddings,omitempty"`
	AttentionBias         bool            `json:"attention_bias,omitempty"`
	MLPBias               bool            `json:"mlp_bias,omitempty"`
	HiddenAct             string          `json:"hidden_act,omitempty"`
	HiddenActivation      string          `json:"hidden_activation,omitempty"`
	SlidingWindow         *int            `json:"sliding_window,omitempty"`
	UseSlidingWindow      *bool           `json:"use_sliding_window,omitempty"`
	QueryPreAttnScalar    float64         `json:"query_pre_attn_scalar,omitempty"`
	AttnLogitSoftcapping  *float64        `json:"attn_logit_softcapping,omitempty"`
	FinalLogitSoftcapping *float64        `json:"final_logit_softcapping,omitempty"`
	LayerTypes            []string        `json:"layer_types,omitempty"`
	SlidingWindowPattern  int             `json:"sliding_window_pattern,omitempty"`
	RopeLocalBaseFreq     float64         `json:"rope_local_base_freq,omitempty"`
	TorchDType            string          `json:"torch_dtype,omitempty"`
	BOSTokenID            *int            `json:"bos_token_id,omitempty"`
	EOSTokenID            IntList         `json:"eos_token_id,omitempty"`
	PadTokenID            *int            `json:"pad_token_id,omitempty"`
	// A classifier's (reward model's) outputs: transformers writes id2label, num_labels only sometimes.
	ID2Label  map[string]string `json:"id2label,omitempty"`
	NumLabels int               `json:"num_labels,omitempty"`
}

// ReadConfig loads and checks dir/config.json.
func ReadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	err := safetensors.RegularFile(path)
	var raw []byte
	if err == nil {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: not found: --model must be a Hugging Face model folder (config.json, *.safetensors, tokenizer)", path)
		}
		return nil, err
	}
	c, err := parseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// parseConfig reads config.json's text: the architecture's defaults for keys it leaves out, and, for an
// image-text checkpoint, the text model's config (text_config) under the checkpoint's architecture name.
func parseConfig(raw []byte) (*Config, error) {
	var head struct {
		Architectures []string        `json:"architectures"`
		TextConfig    json.RawMessage `json:"text_config"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, err
	}
	fresh := func() Config {
		if len(head.Architectures) > 0 {
			if d, ok := configDefaults[head.Architectures[0]]; ok {
				return d()
			}
		}
		return Config{}
	}
	c := fresh()
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	if len(head.TextConfig) == 0 || string(head.TextConfig) == "null" {
		return &c, nil
	}
	text := fresh()
	if err := json.Unmarshal(head.TextConfig, &text); err != nil {
		return nil, fmt.Errorf("text_config: %v", err)
	}
	text.Architectures = head.Architectures
	if text.BOSTokenID == nil {
		text.BOSTokenID = c.BOSTokenID
	}
	if len(text.EOSTokenID) == 0 {
		text.EOSTokenID = c.EOSTokenID
	}
	if text.PadTokenID == nil {
		text.PadTokenID = c.PadTokenID
	}
	if text.TieWordEmbeddings == nil {
		text.TieWordEmbeddings = c.TieWordEmbeddings
	}
	if text.TorchDType == "" {
		text.TorchDType = c.TorchDType
	}
	return &text, nil
}

// Architecture is the first entry of "architectures".
func (c *Config) Architecture() string {
	if len(c.Architectures) == 0 {
		return ""
	}
	return c.Architectures[0]
}

func (c *Config) check() error {
	arch := c.Architecture()
	if _, ok := specBuilderFor(arch); !ok {
		return fmt.Errorf("unknown architecture %q: keel runs %s (and their *ForSequenceClassification reward models)", arch, strings.Join(Architectures(), ", "))
	}
	for name, v := range map[string]int{"hidden_size": c.HiddenSize, "num_hidden_layers": c.NumHiddenLayers, "num_attention_heads": c.NumAttentionHeads, "vocab_size": c.VocabSize, "intermediate_size": c.IntermediateSize} {
		if v <= 0 {
			return fmt.Errorf("%s must be positive (got %d)", name, v)
		}
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	if c.NumKeyValueHeads < 0 || c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return fmt.Errorf("num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.HeadDim == 0 {
		if c.HiddenSize%c.NumAttentionHeads != 0 {
			return fmt.Errorf("hidden_size %d is not a multiple of num_attention_heads %d: set head_dim", c.HiddenSize, c.NumAttentionHeads)
		}
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("head_dim %d must be even for rotary embeddings", c.HeadDim)
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if !(c.RMSNormEps > 0 && c.RMSNormEps < 1) {
		return fmt.Errorf("rms_norm_eps %v: a norm's epsilon is a small positive number (1e-6, 1e-5)", c.RMSNormEps)
	}
	if err := c.readRopeParameters(); err != nil {
		return err
	}
	if c.RopeLocalBaseFreq < 0 || c.RopeLocalBaseFreq > 0 && c.RopeLocalBaseFreq <= 1 {
		return fmt.Errorf("rope_local_base_freq %v: the rotary base is a number above 1 (10000)", c.RopeLocalBaseFreq)
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if !(c.RopeTheta > 1) || math.IsInf(c.RopeTheta, 0) {
		return fmt.Errorf("rope_theta %v: the rotary base is a number above 1 (10000, 500000)", c.RopeTheta)
	}
	if c.MaxPositionEmbeddings == 0 {
		c.MaxPositionEmbeddings = 2048
	}
	if c.MaxPositionEmbeddings < 0 {
		return fmt.Errorf("max_position_embeddings %d must be positive", c.MaxPositionEmbeddings)
	}
	switch k := c.RopeScaling.Kind(); k {
	case "default", "linear":
	case "llama3":
		r := c.RopeScaling
		if r.Factor <= 0 || r.LowFreqFactor <= 0 || r.HighFreqFactor <= r.LowFreqFactor || r.OriginalMaxPositionEmbeddings <= 0 {
			return fmt.Errorf("rope_scaling llama3 needs factor, low_freq_factor < high_freq_factor and original_max_position_embeddings")
		}
	default:
		return fmt.Errorf("rope_scaling type %q is not supported (keel supports default, linear and llama3)", k)
	}
	return nil
}

// Tied reports whether lm_head shares the embedding matrix.
func (c *Config) Tied(defaultTied bool) bool {
	if c.TieWordEmbeddings == nil {
		return defaultTied
	}
	return *c.TieWordEmbeddings
}

// Architectures lists the supported architecture names.
func Architectures() []string {
	names := make([]string, 0, len(architectures))
	for n := range architectures {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// GenerationConfig is generation_config.json.
type GenerationConfig struct {
	BOSTokenID        *int     `json:"bos_token_id"`
	EOSTokenID        IntList  `json:"eos_token_id"`
	PadTokenID        *int     `json:"pad_token_id"`
	Temperature       *float64 `json:"temperature"`
	TopP              *float64 `json:"top_p"`
	TopK              *int     `json:"top_k"`
	DoSample          *bool    `json:"do_sample"`
	RepetitionPenalty *float64 `json:"repetition_penalty"`
	StopStrings       []string `json:"stop_strings"`
}

// ReadGenerationConfig loads dir/generation_config.json; a missing file is an empty config.
func ReadGenerationConfig(dir string) (*GenerationConfig, error) {
	path := filepath.Join(dir, "generation_config.json")
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return &GenerationConfig{}, nil
	}
	if err != nil {
		return nil, err
	}
	var g GenerationConfig
	if err := json.Unmarshal(raw, &g); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &g, nil
}

// readRopeParameters folds transformers 5's rope_parameters into RopeTheta and RopeScaling.
func (c *Config) readRopeParameters() error {
	if len(c.RopeParameters) == 0 || string(c.RopeParameters) == "null" {
		return nil
	}
	var flat map[string]json.RawMessage
	if err := json.Unmarshal(c.RopeParameters, &flat); err != nil {
		return fmt.Errorf("rope_parameters: %v", err)
	}
	raw := c.RopeParameters
	if _, ok := flat["rope_type"]; !ok {
		if _, ok := flat["rope_theta"]; !ok {
			// One dict per layer type. Where they differ, sliding layers may have a base of their own without
			// scaling (Gemma 3's rope_local_base_freq); any other difference keel cannot run.
			full, fok := flat["full_attention"]
			sliding, sok := flat["sliding_attention"]
			switch {
			case fok && sok && string(full) != string(sliding):
				var local struct {
					RopeScaling
					RopeTheta float64 `json:"rope_theta"`
				}
				if err := json.Unmarshal(sliding, &local); err != nil {
					return fmt.Errorf("rope_parameters.sliding_attention: %v", err)
				}
				if local.RopeScaling.Kind() != "default" {
					return fmt.Errorf("rope_parameters: sliding layers scale their RoPE (%s); keel runs scaling on full-attention layers only", local.RopeScaling.Kind())
				}
				if !strings.HasPrefix(c.Architecture(), "Gemma3") {
					return fmt.Errorf("rope_parameters differ between layer types; keel supports that for Gemma 3 only")
				}
				c.RopeLocalBaseFreq = local.RopeTheta
				raw = full
			case fok:
				raw = full
			case sok:
				raw = sliding
			default:
				return fmt.Errorf("rope_parameters has neither rope_type nor per-layer-type entries")
			}
		}
	}
	var p struct {
		RopeScaling
		RopeTheta float64 `json:"rope_theta"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return fmt.Errorf("rope_parameters: %v", err)
	}
	if p.RopeTheta > 0 {
		c.RopeTheta = p.RopeTheta
	}
	if k := p.RopeScaling.Kind(); k != "default" {
		rs := p.RopeScaling
		c.RopeScaling = &rs
	}
	return nil
}

// LlamaShape is the shape of a plain Llama decoder: what keel's own models, benchmarks and device checks choose;
// everything else (norm epsilon, RoPE base, activation) is Llama's default.
type LlamaShape struct {
	Hidden, Intermediate int  // d_model and the MLP's inner width
	Layers               int  // decoder layers
	Heads, KVHeads       int  // query heads and key/value heads (grouped-query attention when fewer)
	Vocab                int  // vocabulary size
	Context              int  // max_position_embeddings
	Tied                 bool // the output head shares the embedding's weights
}

// NewLlamaConfig is the one place a LlamaForCausalLM config is written out: rms_norm_eps 1e-5, rope_theta 10000,
// SiLU, and the given shape and special tokens (bos may be nil; eos may be empty).
func NewLlamaConfig(s LlamaShape, bos *int, eos ...int) *Config {
	tied := s.Tied
	return &Config{
		Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama",
		HiddenSize: s.Hidden, IntermediateSize: s.Intermediate, NumHiddenLayers: s.Layers,
		NumAttentionHeads: s.Heads, NumKeyValueHeads: s.KVHeads, VocabSize: s.Vocab,
		RMSNormEps: 1e-5, RopeTheta: 10000, MaxPositionEmbeddings: s.Context,
		TieWordEmbeddings: &tied, HiddenAct: "silu", BOSTokenID: bos, EOSTokenID: IntList(eos),
	}
}
