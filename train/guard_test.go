package train

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

func TestDivergenceStopsAndKeepsTheLastCheckpoint(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data := chatData(t, dir, 60)
	mdir := tinyModel(t, rt, dir, data)
	run, _ := NewRun(filepath.Join(dir, "runs"), "sft")
	cfg := SFTConfig{ModelNameOrPath: mdir, DatasetPath: data, MaxSteps: 50, LearningRate: 1e8, PerDeviceTrainBatchSize: 4,
		MaxSeqLength: 48, SaveSteps: 1, WarmupRatio: 0, MaxGradNorm: 1e30, Seed: 4}
	err := RunSFT(context.Background(), rt, run, cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "diverged") || !strings.Contains(err.Error(), "checkpoint") {
		t.Fatalf("want a divergence error naming the last checkpoint, got %v", err)
	}
	st, _ := run.ReadState()
	if st.State != Failed || !strings.Contains(st.Error, "diverged") {
		t.Fatalf("state %+v", st)
	}
	ck, _ := latestCheckpoint(run.Dir)
	t.Logf("%v; kept %s", err, filepath.Base(ck))
	if ck == "" {
		t.Fatal("no checkpoint kept")
	}
	if _, err := os.Stat(filepath.Join(ck, "weights.safetensors")); err != nil {
		t.Fatal(err)
	}
}

func TestResumeWithAnotherModelIsRefused(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data := chatData(t, dir, 60)
	mdir := tinyModel(t, rt, dir, data)
	run, _ := NewRun(filepath.Join(dir, "runs"), "sft")
	cfg := SFTConfig{ModelNameOrPath: mdir, DatasetPath: data, MaxSteps: 4, SaveSteps: 2, PerDeviceTrainBatchSize: 2, MaxSeqLength: 32}
	if err := RunSFT(context.Background(), rt, run, cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	// Another model: same vocabulary, a different width.
	other := filepath.Join(dir, "other")
	tied := true
	oc := &model.Config{Architectures: []string{"LlamaForCausalLM"}, HiddenSize: 128, IntermediateSize: 256, NumHiddenLayers: 6,
		NumAttentionHeads: 4, NumKeyValueHeads: 2, VocabSize: 400, RMSNormEps: 1e-5, RopeTheta: 10000, MaxPositionEmbeddings: 512, TieWordEmbeddings: &tied}
	om, err := model.NewRandom(rt, oc, model.Options{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	om.Save(other, torch.Float32)
	om.Close()
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		raw, _ := os.ReadFile(filepath.Join(mdir, f))
		os.WriteFile(filepath.Join(other, f), raw, 0o644)
	}
	before, _ := os.ReadDir(filepath.Join(run.Dir, "checkpoints"))
	cfg.ModelNameOrPath = other
	cfg.MaxSteps = 8
	raw, _ := json.Marshal(cfg)
	os.WriteFile(filepath.Join(run.Dir, "config.json"), raw, 0o644)
	err = RunSFT(context.Background(), rt, run, cfg, Options{Resume: true})
	if err == nil || !strings.Contains(err.Error(), "another model") {
		t.Fatalf("want a clear refusal, got %v", err)
	}
	after, _ := os.ReadDir(filepath.Join(run.Dir, "checkpoints"))
	if len(after) != len(before) {
		t.Fatalf("checkpoints changed: %d -> %d", len(before), len(after))
	}
}
