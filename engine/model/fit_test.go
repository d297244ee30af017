package model_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// The paper's largest model, Llama 3.3 70B, from its config.json alone: 70,553,706,496 parameters (the published
// count), 2 x 80 x 1024 x 8192 x 2 bytes of KV cache at 8K positions; one 80 GB GPU is refused with the two ways
// to fit, two and four fit with the layers split evenly.
func TestFitOf70B(t *testing.T) {
	dir := t.TempDir()
	cfg := `{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":8192,"intermediate_size":28672,
	"num_hidden_layers":80,"num_attention_heads":64,"num_key_value_heads":8,"vocab_size":128256,"rms_norm_eps":1e-5,
	"rope_theta":500000.0,"max_position_embeddings":131072,"tie_word_embeddings":false,"torch_dtype":"bfloat16",
	"rope_scaling":{"factor":8.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := model.ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	const gib = int64(1) << 30
	fit := func(gpus int) *model.FitReport {
		mems := make([]int64, gpus)
		for i := range mems {
			mems[i] = 80 * gib
		}
		r, err := c.EstimateFit(model.FitOptions{DTypeBytes: 2, Context: 8192, Batch: 1, GPUs: mems})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	one := fit(1)
	if one.Parameters != 70_553_706_496 || one.WeightBytes != 2*70_553_706_496 || one.KVBytes != 2*80*1024*8192*2 {
		t.Fatalf("parameters %d, weights %d, KV %d", one.Parameters, one.WeightBytes, one.KVBytes)
	}
	if one.Fits || !strings.Contains(one.Advice, "2 GPUs") || !strings.Contains(one.Advice, "--offload") {
		t.Fatalf("one 80 GB GPU: fits=%v, advice %q", one.Fits, one.Advice)
	}
	for _, n := range []int{2, 4} {
		r := fit(n)
		if !r.Fits || len(r.Devices) != n {
			t.Fatalf("%d GPUs: fits=%v over %d devices", n, r.Fits, len(r.Devices))
		}
		var weights int64
		layers := 0
		for _, d := range r.Devices {
			weights += d.Weights
			layers += d.Layers
			if d.Layers != 80/n {
				t.Errorf("%d GPUs: %s holds %d layers, want %d", n, d.Name, d.Layers, 80/n)
			}
		}
		if weights != r.WeightBytes || layers != 80 {
			t.Fatalf("%d GPUs: the shares hold %d bytes and %d layers, the model %d and 80", n, weights, layers, r.WeightBytes)
		}
	}
}

// For every architecture keel runs, the count from config.json equals the elements of the weights a model of
// that config holds.
func TestParametersFromConfigMatchTheWeights(t *testing.T) {
	rt := torchtest.Runtime(t)
	for name, cfg := range model.TinyConfigs() {
		m, err := model.NewRandom(rt, cfg, model.Options{}, 1)
		if err != nil {
			t.Fatal(err)
		}
		s := rt.NewScope()
		var held int64
		for _, p := range m.Params() {
			n := int64(1)
			for _, d := range s.Shape(p) {
				n *= d
			}
			held += n
		}
		s.Close()
		m.Close()
		want, err := cfg.Parameters()
		if err != nil {
			t.Fatal(err)
		}
		if held != want {
			t.Errorf("%s: config.json implies %d parameters, the model holds %d", name, want, held)
		}
	}
}
