package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// llama70B is Llama 3.3 70B's config.json, with num_hidden_layers standing in for bigger models.
func llama70B(t *testing.T, layers string) (*Config, string) {
	dir := t.TempDir()
	cfg := `{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":8192,"intermediate_size":28672,
	"num_hidden_layers":` + layers + `,"num_attention_heads":64,"num_key_value_heads":8,"vocab_size":128256,"rms_norm_eps":1e-5,
	"rope_theta":500000.0,"max_position_embeddings":131072,"tie_word_embeddings":false,"torch_dtype":"bfloat16"}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c, dir
}

// The placement the loader follows is the one the fit report printed: 70B over two 80 GB GPUs with 4 layers on the
// CPU gives Options.Layers whose per-device shares (embedding on the first GPU, head on the last) are the report's,
// byte for byte.
func TestPlacementFollowsTheFitReport(t *testing.T) {
	c, _ := llama70B(t, "80")
	const gib = int64(1) << 30
	o := FitOptions{DTypeBytes: 2, Context: 4096, Batch: 1, GPUs: []int64{80 * gib, 80 * gib}, Names: []string{"cuda:2", "cuda:3"}, Offload: 4}
	r, err := c.EstimateFit(o)
	if err != nil || !r.Fits {
		t.Fatalf("fits=%v err=%v", r != nil && r.Fits, err)
	}
	layers, err := r.LayerDevices()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 80 || layers[0] != (torch.Device{CUDA: true, Index: 2}) || layers[79] != torch.CPU || layers[76] != torch.CPU || layers[75] != (torch.Device{CUDA: true, Index: 3}) {
		t.Fatalf("layer devices %v", layers)
	}
	opts := Options{Device: layers[0], Layers: layers, DType: torch.BFloat16}
	if opts.headDevice() != (torch.Device{CUDA: true, Index: 3}) {
		t.Fatalf("head on %v, want cuda:3 (the last GPU)", opts.headDevice())
	}
	got, err := c.placementReport(o, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Devices) != len(r.Devices) {
		t.Fatalf("loader places on %d devices, the report on %d", len(got.Devices), len(r.Devices))
	}
	for i, d := range r.Devices {
		g := got.Devices[i]
		if g.Name != d.Name || g.Layers != d.Layers || g.Weights != d.Weights || g.KVCache != d.KVCache {
			t.Errorf("%s: loader %d layers, %d weight bytes, %d KV bytes; report %s %d, %d, %d", g.Name, g.Layers, g.Weights, g.KVCache, d.Name, d.Layers, d.Weights, d.KVCache)
		}
	}
}

// A model too big for the machine is refused before a byte of weights is read (the folder holds config.json
// alone), in one line that says what it needs, what there is, and what to change.
func TestLoadRefusesWhatCannotFit(t *testing.T) {
	rt := torchtest.Runtime(t)
	c, dir := llama70B(t, "800") // ~700B parameters: 2.6 TB in f32
	_, err := Load(rt, dir, Options{})
	if err == nil {
		t.Fatal("a 700B model loaded on this machine")
	}
	msg := err.Error()
	for _, want := range []string{"does not fit", "cpu needs", "at 4096 positions", "available", "--dtype bf16"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("refusal spans lines: %q", msg)
	}
	if _, err := LoadWeights(rt, dir, c, Options{}); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Errorf("LoadWeights: %v", err)
	}
}

// Placement requests a user can get wrong are refused with the fix.
func TestPlacementRequestsRefused(t *testing.T) {
	rt := torchtest.Runtime(t)
	c, _ := llama70B(t, "80")
	for _, tc := range []struct{ device, want string }{
		{"cuda:0,cuda:0", "twice"},
		{"cpu,cuda:0", "--offload"},
		{"tpu", "bad device"},
	} {
		if _, err := ParseDevices(rt, tc.device); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--device %s: %v, want %q", tc.device, err, tc.want)
		}
	}
	if n := rt.CUDADeviceCount(); n == 0 {
		if devs, err := ParseDevices(rt, "auto"); err != nil || len(devs) != 1 || devs[0] != torch.CPU {
			t.Errorf("auto without a GPU: %v %v", devs, err)
		}
	}
	if devs, err := ParseDevices(rt, "cuda:0, cuda:1"); err != nil || len(devs) != 2 || devs[1] != (torch.Device{CUDA: true, Index: 1}) {
		t.Errorf("cuda:0, cuda:1: %v %v", devs, err)
	}
	if _, _, err := Plan(rt, c, PlacementRequest{Devices: []torch.Device{torch.CPU}, Offload: 2}); err == nil || !strings.Contains(err.Error(), "--device cuda") {
		t.Errorf("--offload on the CPU: %v", err)
	}
	if _, _, err := Plan(rt, c, PlacementRequest{Devices: []torch.Device{{CUDA: true}}, Offload: 81}); err == nil || !strings.Contains(err.Error(), "0 to 80") {
		t.Errorf("--offload 81 of 80 layers: %v", err)
	}
	if opts, r, err := Plan(rt, c, PlacementRequest{Devices: []torch.Device{torch.CPU}}); err != nil || r != nil || opts.Layers != nil {
		t.Errorf("one device: %+v %v %v", opts, r, err)
	}
	tiny := TinyConfigs()["llama"]
	if _, err := NewRandom(rt, tiny, Options{Layers: []torch.Device{torch.CPU}}, 1); err == nil || !strings.Contains(err.Error(), "placement of 1 layers") {
		t.Errorf("a placement of the wrong length: %v", err)
	}
}
