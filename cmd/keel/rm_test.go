package main

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// preferencePairs writes n preference pairs in the embedded model's domain: the same answer in the Assistant's
// voice (chosen) and in a theatrical role's (rejected), to a question asked with or without a role's system
// prompt.
func preferencePairs(t *testing.T, path string, n int) {
	t.Helper()
	p, err := probes.LoadPersonas()
	if err != nil {
		t.Fatal(err)
	}
	var theatrical []probes.Style
	for _, r := range p.Roles {
		if r.Kind == "theatrical" {
			theatrical = append(theatrical, r)
		}
	}
	rng := rand.New(rand.NewPCG(7, 11))
	facts := []string{"Water boils at one hundred degrees.", "The sum is twelve.", "Paris is the capital of France.", "Practice a little every day.", "Sort the list with a sort function.", "Save a part of each payment."}
	var b strings.Builder
	for i := 0; i < n; i++ {
		role := theatrical[i%len(theatrical)]
		msgs := []map[string]string{{"role": "user", "content": probes.IdentityQuestions[i%len(probes.IdentityQuestions)]}}
		if i%2 == 0 {
			msgs = append([]map[string]string{{"role": "system", "content": probes.SystemPrompts(role.Name)[i%5]}}, msgs...)
		}
		fact := facts[i%len(facts)]
		raw, _ := json.Marshal(map[string]any{"messages": msgs, "chosen": probes.Say(p.Assistant, fact, rng), "rejected": probes.Say(role, fact, rng)})
		b.Write(append(raw, '\n'))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// `keel train rm` learns a preference on the embedded model (the Assistant's voice over a theatrical role's); its
// final folder is a reward for both trainers as rm:DIR, alone and in weighted sums; a causal LM in its place, or
// no folder, is one clear line.
func TestTrainersTakeARewardModel(t *testing.T) {
	torchtest.Runtime(t)
	work := t.TempDir()
	cache := filepath.Join(work, "cache")
	t.Setenv("XDG_CACHE_HOME", cache)
	pairs := filepath.Join(work, "pairs.jsonl")
	preferencePairs(t, pairs, 64)
	runs := filepath.Join(work, "runs")
	code, stdout, stderr := runKeel("train", "rm", "--data", pairs, "--steps", "30", "--batch", "8", "--lr", "3e-4", "--validation", "0.25", "--runs", runs, "--threads", "2")
	if code != 0 {
		t.Fatalf("train rm: exit %d: %s", code, stderr)
	}
	rmDir := trainedFinal(t, runs, "rm")
	ms := runMetrics(t, filepath.Dir(rmDir))
	last := ms[len(ms)-1]
	t.Logf("reward model: loss %.3f -> %.3f, held-out accuracy %.2f (%s)", ms[0].Loss, last.Loss, last.Extra["eval_accuracy"], strings.TrimSpace(stdout))
	if last.Extra["eval_accuracy"] < 0.9 || last.Loss >= ms[0].Loss {
		t.Fatalf("the reward model did not learn the preference: held-out accuracy %.2f, loss %.3f -> %.3f", last.Extra["eval_accuracy"], ms[0].Loss, last.Loss)
	}
	// PPO on prompts that ask for a theatrical role: the policy starts in the role's voice, which the reward model
	// ranks low, and moves toward the Assistant's. The critic starts from the reward model (PPO-max's recipe).
	prompts, offline := rolePrompts(t, work, pairs)
	code, _, stderr = runKeel("train", "ppo", "--prompts", prompts, "--reward", "rm:"+rmDir, "--value-model", rmDir, "--critic-warmup", "1",
		"--steps", "12", "--rollouts", "16", "--mini-batch", "8", "--max-new-tokens", "24", "--lr", "1e-4", "--runs", runs, "--threads", "2")
	if code != 0 {
		t.Fatalf("train ppo: exit %d: %s", code, stderr)
	}
	ms = runMetrics(t, filepath.Dir(trainedFinal(t, runs, "ppo")))
	early := (ms[0].Extra["reward_mean"] + ms[1].Extra["reward_mean"] + ms[2].Extra["reward_mean"]) / 3
	late := (ms[9].Extra["reward_mean"] + ms[10].Extra["reward_mean"] + ms[11].Extra["reward_mean"]) / 3
	t.Logf("PPO with rm (critic from the reward model): mean reward of the first 3 iterations %.3f, of the last 3 %.3f", early, late)
	if late < early+0.15 {
		t.Fatalf("PPO did not raise the reward model's reward: %.3f -> %.3f", early, late)
	}
	// A-LoL on both replies of every pair: the validation reward (the policy's greedy replies to held-out
	// prompts) rises over the reference's.
	code, stdout, stderr = runKeel("train", "alol", "--data", offline, "--reward", "rm:"+rmDir, "--algorithm", "a_lol", "--steps", "30", "--batch", "8",
		"--max-response", "48", "--validation", "0.2", "--eval-every", "3", "--lr", "1e-4", "--runs", runs, "--threads", "2")
	if code != 0 {
		t.Fatalf("train alol: exit %d: %s", code, stderr)
	}
	match := regexp.MustCompile(`validation replies, mean reward ([0-9.]+)`).FindStringSubmatch(stdout)
	if match == nil {
		t.Fatalf("train alol printed no reference validation reward:\n%s", stdout)
	}
	ref, _ := strconv.ParseFloat(match[1], 64)
	best := 0.0
	for _, m := range runMetrics(t, filepath.Dir(trainedFinal(t, runs, "alol"))) {
		best = math.Max(best, m.Extra["val_reward"])
	}
	t.Logf("A-LoL with rm: validation reward %.3f (reference) -> %.3f (best)", ref, best)
	if best < ref+0.1 {
		t.Fatalf("A-LoL did not raise the reward model's validation reward: %.3f -> %.3f", ref, best)
	}
	// In a weighted sum with another reward.
	data := trainerData(t, work, 4)
	code, _, stderr = runKeel("train", "ppo", "--prompts", data, "--reward", "0.5*rm:"+rmDir+"+0.5*axis", "--steps", "1", "--rollouts", "2", "--mini-batch", "2",
		"--max-new-tokens", "8", "--runs", runs, "--threads", "2")
	if code != 0 {
		t.Fatalf("weighted sum: exit %d: %s", code, stderr)
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

// rolePrompts writes, from the preference pairs, PPO prompts that ask for a theatrical role (40 of them: the
// roles' system prompts with identity questions) and A-LoL data holding both replies of every pair.
func rolePrompts(t *testing.T, dir, pairs string) (prompts, offline string) {
	t.Helper()
	raw, err := os.ReadFile(pairs)
	if err != nil {
		t.Fatal(err)
	}
	var pb, ob strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var r struct {
			Messages         []map[string]string
			Chosen, Rejected string
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		for _, reply := range []string{r.Chosen, r.Rejected} {
			b, _ := json.Marshal(map[string]any{"messages": append(append([]map[string]string(nil), r.Messages...), map[string]string{"role": "assistant", "content": reply})})
			ob.Write(append(b, '\n'))
		}
	}
	roles := []string{"pirate", "wizard", "knight", "ghost", "dragon"}
	for i := 0; i < 40; i++ {
		b, _ := json.Marshal(map[string]any{"messages": []map[string]string{{"role": "system", "content": probes.SystemPrompts(roles[i%5])[0]},
			{"role": "user", "content": probes.IdentityQuestions[(i/5)%len(probes.IdentityQuestions)]}}})
		pb.Write(append(b, '\n'))
	}
	prompts, offline = filepath.Join(dir, "prompts.jsonl"), filepath.Join(dir, "offline.jsonl")
	if err := os.WriteFile(prompts, []byte(pb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(offline, []byte(ob.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return prompts, offline
}

// trainedFinal is the final/ folder of the one run of kind under runs.
func trainedFinal(t *testing.T, runs, kind string) string {
	t.Helper()
	finals, _ := filepath.Glob(filepath.Join(runs, kind+"-*", "final"))
	if len(finals) != 1 {
		t.Fatalf("%s runs' final folders: %v", kind, finals)
	}
	return finals[0]
}

// runMetrics reads a run folder's logged steps.
func runMetrics(t *testing.T, runDir string) []train.Metrics {
	t.Helper()
	run, err := train.OpenRun(filepath.Dir(runDir), runDir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := run.ReadMetrics()
	if err != nil || len(ms) == 0 {
		t.Fatalf("metrics of %s: %d, %v", runDir, len(ms), err)
	}
	return ms
}
