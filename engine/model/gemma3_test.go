package model_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// Gemma 3's image-text checkpoints (4B and up) keep the text model's config under text_config and its weights
// under language_model.model. (as published) or model.language_model. (as newer transformers save them), beside
// a vision tower keel does not read: either layout loads to the same logits as the text-only checkpoint.
func TestGemma3ImageTextCheckpointLoadsItsLanguageModel(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir, orig := tinyCheckpoint(t, rt, "gemma3", torch.Float32)
	var text map[string]any
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(raw, &text)
	delete(text, "architectures")
	delete(text, "eos_token_id") // as published: the top level holds the end-of-turn ids
	ids := testPrompt(40, orig.Config.VocabSize, 3)
	want, _ := orig.Logits(ids, nil)
	for _, prefix := range []string{"language_model.model.", "model.language_model."} {
		t.Run(prefix, func(t *testing.T) {
			out := t.TempDir()
			cfg, _ := json.Marshal(map[string]any{"architectures": []string{"Gemma3ForConditionalGeneration"}, "model_type": "gemma3",
				"text_config": text, "vision_config": map[string]any{"hidden_size": 8}, "eos_token_id": []int{1, 106}})
			os.WriteFile(filepath.Join(out, "config.json"), cfg, 0o644)
			f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			tensors := []safetensors.Tensor{{Name: "vision_tower.vision_model.embeddings.patch_embedding.weight", DType: "F32", Shape: []int64{2}, Data: make([]byte, 8)}}
			for _, name := range f.Names() {
				data, info, _ := f.Data(name)
				tensors = append(tensors, safetensors.Tensor{Name: prefix + strings.TrimPrefix(name, "model."), DType: info.DType, Shape: info.Shape, Data: append([]byte(nil), data...)})
			}
			if err := safetensors.Write(filepath.Join(out, "model.safetensors"), tensors, nil); err != nil {
				t.Fatal(err)
			}
			c, err := model.ReadConfig(out)
			if err != nil {
				t.Fatal(err)
			}
			if c.NumHiddenLayers != orig.Config.NumHiddenLayers || len(c.EOSTokenID) != 2 {
				t.Fatalf("text_config not read: %+v", c)
			}
			m, err := model.LoadWeights(rt, out, c, model.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			got, err := m.Logits(ids, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d := maxAbsDiff(want, got); d != 0 {
				t.Fatalf("image-text layout differs by %g", d)
			}
		})
	}
}

// The published gemma-3-4b-it config.json gives only what differs from Gemma3TextConfig's defaults; keel fills
// the rest as transformers does: 34 layers, 8 heads over 4 KV heads of 256, every sixth layer global, linear
// RoPE scaling by 8 on global layers over a base of 1e6, a local base of 1e4; and its fit report counts 3.9B
// parameters for the text model (4.3B with the vision tower, which keel does not load).
func TestGemma3PublishedConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"architectures": ["Gemma3ForConditionalGeneration"],
	"boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
	"initializer_range": 0.02, "mm_tokens_per_image": 256, "model_type": "gemma3",
	"text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
	"rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
	"torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
	"vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type": "siglip_vision_model",
	"num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}}`), 0o644)
	c, err := model.ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.NumHiddenLayers != 34 || c.NumAttentionHeads != 8 || c.NumKeyValueHeads != 4 || c.HeadDim != 256 || c.VocabSize != 262208 ||
		c.RopeTheta != 1e6 || c.RopeLocalBaseFreq != 1e4 || c.RopeScaling.Kind() != "linear" || *c.SlidingWindow != 1024 || c.QueryPreAttnScalar != 256 {
		t.Fatalf("defaults not applied: %+v", c)
	}
	spec, err := model.SpecFor(c)
	if err != nil {
		t.Fatal(err)
	}
	var global []int
	for i, s := range spec.Sliding {
		if !s {
			global = append(global, i)
		}
	}
	if len(global) != 5 || global[0] != 5 || global[4] != 29 || spec.LocalRopeTheta != 1e4 || !spec.QKNorm || !spec.Tied {
		t.Fatalf("spec: global layers %v, %+v", global, spec)
	}
	n, err := c.Parameters()
	if err != nil {
		t.Fatal(err)
	}
	if n < 3.85e9 || n > 3.9e9 {
		t.Fatalf("text model parameters %d, want about 3.88e9", n)
	}
}

// transformers 5 writes one rope_parameters entry per layer type; Gemma 3's differ (a scaled global RoPE, a plain
// local one) and keel reads both.
func TestGemma3RopeParametersPerLayerType(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64,
	"intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
	"vocab_size": 300, "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
	"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}`), 0o644)
	c, err := model.ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.RopeTheta != 1e6 || c.RopeScaling.Kind() != "linear" || c.RopeScaling.Factor != 8 || c.RopeLocalBaseFreq != 1e4 {
		t.Fatalf("rope_parameters: theta %v scaling %+v local %v", c.RopeTheta, c.RopeScaling, c.RopeLocalBaseFreq)
	}
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64,
	"intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4, "vocab_size": 300,
	"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
	"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}`), 0o644)
	if _, err := model.ReadConfig(dir); err == nil || !strings.Contains(err.Error(), "Gemma 3 only") {
		t.Fatalf("a per-layer-type RoPE on another architecture: %v", err)
	}
}
