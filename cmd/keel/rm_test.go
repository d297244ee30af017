package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/models"
)

// rewardModelOf writes a reward model built on the embedded persona model's decoder: its weights, its tokenizer,
// LlamaForSequenceClassification with one label and a score head along a fixed random direction.
func rewardModelOf(t *testing.T, cache, out string) string {
	t.Helper()
	rt := torchtest.Runtime(t)
	dir, err := models.Persona(filepath.Join(cache, "keel", "models"))
	if err != nil {
		t.Fatal(err)
	}
	lm, err := model.Load(rt, dir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	s := rt.NewScope()
	defer s.Close()
	if err := rt.ManualSeed(3); err != nil {
		t.Fatal(err)
	}
	d := int64(lm.Config.HiddenSize)
	score := s.DivScalar(s.Randn([]int64{1, d}, torch.Float32, torch.CPU), float64(d))
	cfg := *lm.Config
	cfg.Architectures = []string{"LlamaForSequenceClassification"}
	cfg.ID2Label = map[string]string{"0": "LABEL_0"}
	rm := *lm.Model
	rm.Config = &cfg
	rm.Names = nil
	for _, n := range lm.Names {
		if n.Name != "lm_head.weight" {
			rm.Names = append(rm.Names, n)
		}
	}
	rm.Names = append(rm.Names, model.NamedTensor{Name: "score.weight", Tensor: score})
	if err := rm.Save(out, torch.Float32); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		raw, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, f), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// rm:DIR is a reward for both trainers, alone and in weighted sums; a causal LM in its place, or no folder, is
// one clear line.
func TestTrainersTakeARewardModel(t *testing.T) {
	work := t.TempDir()
	cache := filepath.Join(work, "cache")
	t.Setenv("XDG_CACHE_HOME", cache)
	rmDir := rewardModelOf(t, cache, filepath.Join(work, "rm"))
	data := trainerData(t, work, 4)
	runs := filepath.Join(work, "runs")
	for _, args := range [][]string{
		{"train", "alol", "--data", data, "--reward", "rm:" + rmDir, "--algorithm", "wbc", "--steps", "2", "--batch", "2", "--max-response", "16", "--validation", "0.25"},
		{"train", "ppo", "--prompts", data, "--reward", "0.5*rm:" + rmDir + "+0.5*axis", "--steps", "1", "--rollouts", "2", "--mini-batch", "2", "--max-new-tokens", "8"},
	} {
		code, _, stderr := runKeel(append(args, "--runs", runs, "--threads", "2")...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args[:2], code, stderr)
		}
	}
	finals, _ := filepath.Glob(filepath.Join(runs, "*", "final", "model.safetensors"))
	if len(finals) != 2 {
		t.Fatalf("final weights %v: want one per run", finals)
	}
	persona, _ := models.Persona(filepath.Join(cache, "keel", "models"))
	for _, spec := range []string{"rm:" + persona, "rm:", "rm:" + filepath.Join(work, "nowhere")} {
		code, _, stderr := runKeel("train", "ppo", "--prompts", data, "--reward", spec, "--steps", "1", "--runs", runs)
		if code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("--reward %s: exit %d, %q", spec, code, stderr)
		}
		t.Logf("--reward %s: %s", spec, strings.TrimSpace(stderr))
	}
}
