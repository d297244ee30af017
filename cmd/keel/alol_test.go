package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/evals"
)

// The fast subset of `keel eval alol` on the embedded model: two variants, one seed, a few short conversations.
// The full protocol is a command (figures in docs/results/training.md); this checks that every figure is produced and sane.
func TestEvalALoLFastSubset(t *testing.T) {
	torchtest.Runtime(t)
	work := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", filepath.Join(work, "cache"))
	code, stdout, stderr := runKeel("eval", "alol", "--json", "--work", filepath.Join(work, "eval"), "--variants", "a_lol,nll", "--seeds", "1",
		"--conversations", "3", "--held-out", "1", "--turns", "6", "--steps", "4", "--batch", "4", "--max-response", "24", "--tune-lr", "1e-4,1e-3",
		"--drift-conversations", "2", "--questions", "1", "--roles", "pirate,teacher", "--threads", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep evals.ALoLEvalReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, stdout)
	}
	if rep.Examples != 2*3*6 || len(rep.Variants) != 2 {
		t.Fatalf("%d examples, variants %v: want 36 rollout turns and a_lol, nll", rep.Examples, rep.Variants)
	}
	for v, r := range rep.Variants {
		if len(r.Rewards) != 1 || r.RewardMean < 0 || r.RewardMean > 1 || (r.LR != 1e-4 && r.LR != 1e-3) {
			t.Errorf("%s: %+v", v, r)
		}
	}
	if rep.RoleFidelity < 0 || rep.RoleFidelity > 1 || rep.CapabilityBefore <= 0 || rep.PositiveFraction <= 0 || rep.PositiveFraction > 1 {
		t.Errorf("report %+v", rep)
	}
	if _, err := os.Stat(filepath.Join(work, "eval", "alol_eval.json")); err != nil {
		t.Error(err)
	}
	// Bad flags are one clear line.
	for _, args := range [][]string{{"--variants", "a_lol,ppo"}, {"--seeds", "one"}, {"--lr", "a_lol=fast"}} {
		code, _, stderr := runKeel(append([]string{"eval", "alol"}, args...)...)
		if code != 2 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, args[0]) {
			t.Errorf("%v: exit %d, %q", args, code, stderr)
		}
	}
}

// The fast subset of `keel eval ppo` on the embedded model: a few short iterations and an unstable run.
func TestEvalPPOFastSubset(t *testing.T) {
	torchtest.Runtime(t)
	work := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", filepath.Join(work, "cache"))
	code, stdout, stderr := runKeel("eval", "ppo", "--json", "--work", filepath.Join(work, "eval"), "--conversations", "3", "--turns", "6",
		"--steps", "2", "--rollouts", "4", "--mini-batch", "4", "--max-new-tokens", "16", "--unstable-steps", "3", "--held-out", "1",
		"--drift-conversations", "2", "--questions", "1", "--roles", "pirate,teacher", "--threads", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep evals.PPOEvalReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, stdout)
	}
	if rep.Prompts != 2*3*6 || rep.RewardStart <= 0 || rep.RewardStart > 1 || rep.KLTarget <= 0 || rep.CollapseReason == "" {
		t.Fatalf("report %+v", rep)
	}
	// The side-by-side: A-LoL ran under PPO's wall-clock budget, which cut it far short of its step ceiling.
	if len(rep.SameBudget) != 2 || rep.SameBudget[0].Method != "ppo" || rep.SameBudget[1].Method != "a_lol" {
		t.Fatalf("same-budget rows %+v: want ppo then a_lol", rep.SameBudget)
	}
	for _, s := range rep.SameBudget {
		if s.Steps < 1 || s.Seconds <= 0 || s.HeldOutReward < 0 || s.HeldOutReward > 1 || s.RoleFidelity < 0 || s.RoleFidelity > 1 {
			t.Errorf("same-budget row %+v", s)
		}
	}
	if a := rep.SameBudget[1]; a.Steps >= 100 {
		t.Errorf("A-LoL ran %d steps in %.0f s against PPO's %.0f s: the budget did not stop it", a.Steps, a.Seconds, rep.Seconds)
	}
	if _, err := os.Stat(filepath.Join(work, "eval", "ppo_eval.json")); err != nil {
		t.Error(err)
	}
}

// `keel train alol` and `keel train ppo` on the embedded model (no --model) with the axis reward: each finishes
// its run and exports final weights; a reward spec that names nothing known is one clear line.
func TestTrainALoLAndPPOCommands(t *testing.T) {
	torchtest.Runtime(t)
	work := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", filepath.Join(work, "cache"))
	data := trainerData(t, work, 6)
	runs := filepath.Join(work, "runs")
	for _, args := range [][]string{
		{"train", "alol", "--data", data, "--reward", "axis", "--algorithm", "wbc", "--steps", "2", "--batch", "2", "--max-response", "16", "--validation", "0.34"},
		{"train", "ppo", "--prompts", data, "--steps", "1", "--rollouts", "2", "--mini-batch", "2", "--max-new-tokens", "8"},
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
	code, _, stderr := runKeel("train", "ppo", "--prompts", data, "--reward", "charm", "--runs", runs)
	if code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "charm") {
		t.Errorf("unknown reward: exit %d, %q", code, stderr)
	}
}

// trainerData writes the first n of six one-turn conversations as a trainer's JSONL data (or prompts).
func trainerData(t *testing.T, dir string, n int) string {
	t.Helper()
	path := filepath.Join(dir, "data.jsonl")
	var b strings.Builder
	for i, q := range []string{"How do I sort a list?", "What is 3 times 4?", "Who are you?", "How can I save money?", "What is the capital of France?", "How do I learn a language?"}[:n] {
		reply := []string{"Use a sort function.", "3 times 4 is 12.", "I am an AI assistant.", "Set a budget.", "Paris.", "Practice every day."}[i]
		raw, _ := json.Marshal(map[string]any{"messages": []map[string]string{{"role": "user", "content": q}, {"role": "assistant", "content": reply}}})
		b.Write(append(raw, '\n'))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
