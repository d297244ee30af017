package model_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// A checkpoint split into shards with model.safetensors.index.json loads to the same logits.
func TestShardedCheckpoint(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir, orig := tinyCheckpoint(t, rt, "qwen3", torch.Float32)
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	var shards [2][]safetensors.Tensor
	index := map[string]string{}
	for i, name := range f.Names() {
		data, info, _ := f.Data(name)
		k := i % 2
		shards[k] = append(shards[k], safetensors.Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: append([]byte(nil), data...)})
		index[name] = []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[k]
	}
	f.Close()
	os.Remove(filepath.Join(dir, "model.safetensors"))
	for k, name := range []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} {
		if err := safetensors.Write(filepath.Join(dir, name), shards[k], nil); err != nil {
			t.Fatal(err)
		}
	}
	raw, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": index})
	os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), raw, 0o644)
	cfg, _ := model.ReadConfig(dir)
	m, err := model.LoadWeights(rt, dir, cfg, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ids := testPrompt(20, cfg.VocabSize, 1)
	a, _ := orig.Logits(ids, nil)
	b, err := m.Logits(ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(a, b); d != 0 {
		t.Fatalf("sharded load differs by %g", d)
	}
}

// Loading f32 weights on the CPU maps the file instead of copying it: the peak resident memory grows by about
// the weights' size (the pages read), not twice that.
func TestLoadingMapsRatherThanCopies(t *testing.T) {
	rt := torchtest.Runtime(t)
	tied := true
	cfg := &model.Config{Architectures: []string{"LlamaForCausalLM"}, HiddenSize: 512, IntermediateSize: 1536, NumHiddenLayers: 8,
		NumAttentionHeads: 8, NumKeyValueHeads: 8, VocabSize: 8000, RMSNormEps: 1e-5, RopeTheta: 10000, MaxPositionEmbeddings: 512, TieWordEmbeddings: &tied}
	m, err := model.NewRandom(rt, cfg, model.Options{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := m.Save(dir, torch.Float32); err != nil {
		t.Fatal(err)
	}
	m.Close()
	st, _ := os.Stat(filepath.Join(dir, "model.safetensors"))
	size := st.Size()
	cfg2, _ := model.ReadConfig(dir)
	// Reset the high-water mark (VmHWM) so it measures the load alone.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0o200); err != nil {
		t.Fatalf("resetting the peak RSS: %v", err)
	}
	before := rss(t)
	lm, err := model.LoadWeights(rt, dir, cfg2, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	if _, err := lm.Logits([]int{1, 2, 3}, nil); err != nil {
		t.Fatal(err)
	}
	grown := peakRSS(t) - before
	t.Logf("weights %.1f MiB; peak resident memory grew %.1f MiB through loading and one forward pass", float64(size)/(1<<20), float64(grown)/(1<<20))
	if float64(grown) > 1.5*float64(size) {
		t.Fatalf("loading %d bytes of weights grew RSS by %d: the weights were copied", size, grown)
	}
}
