package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// wordReward scores the share of a response's words that are the word (a reward a tiny model can learn).
type wordReward struct{ word string }

func (w wordReward) Name() string { return "word:" + w.word }

func (w wordReward) Score(_ context.Context, samples []Sample) ([]float64, error) {
	out := make([]float64, len(samples))
	for i, s := range samples {
		words := strings.Fields(s.Response)
		for _, x := range words {
			if strings.Trim(x, ".,?!") == w.word {
				out[i]++
			}
		}
		out[i] /= float64(max(1, len(words)))
	}
	return out, nil
}

func ppoPrompts(t testing.TB, dir string) string {
	path := filepath.Join(dir, "prompts.jsonl")
	var b strings.Builder
	words := []string{"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
	for i := 0; i < 30; i++ {
		raw, _ := json.Marshal(map[string]any{"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("What is %s plus %s?", words[i%10], words[(i*3+1)%10])}}})
		b.Write(append(raw, '\n'))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// sftTiny is a tiny model after a short SFT on the sums: PPO starts from a model that answers.
func sftTiny(t *testing.T, dir string) string {
	rt := torchtest.Runtime(t)
	data := chatData(t, dir, 200)
	mdir := tinyModel(t, rt, dir, data)
	sft, err := NewRun(filepath.Join(dir, "runs"), "sft")
	if err != nil {
		t.Fatal(err)
	}
	if err := RunSFT(context.Background(), rt, sft, SFTConfig{ModelNameOrPath: mdir, DatasetPath: data, MaxSteps: 30, LearningRate: 2e-3,
		PerDeviceTrainBatchSize: 8, MaxSeqLength: 64, Seed: 1}, Options{}); err != nil {
		t.Fatal(err)
	}
	st, _ := sft.ReadState()
	return st.Final
}

// ppoRun is a fresh PPO run on a tiny SFT'd model with its prompts, and the runtime.
func ppoRun(t *testing.T) (*torch.Runtime, *Run, string, string) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	policy := sftTiny(t, dir)
	run, err := NewRun(filepath.Join(dir, "runs"), "ppo")
	if err != nil {
		t.Fatal(err)
	}
	return rt, run, policy, ppoPrompts(t, dir)
}

// PPO raises the mean reward of a tiny SFT'd model and logs the collapse monitors.
func TestPPORaisesReward(t *testing.T) {
	rt, run, policy, prompts := ppoRun(t)
	cfg := PPOConfig{ModelNameOrPath: policy, PromptsPath: prompts, LearningRate: 3e-4, MaxSteps: 12, RolloutBatchSize: 16,
		MiniBatchSize: 8, NumPPOEpochs: 2, KLCoef: 0.02, MaxNewTokens: 12, RewardNormalize: true, CriticWarmupSteps: 1, Seed: 1, SaveSteps: 4}
	if err := RunPPO(context.Background(), rt, run, cfg, wordReward{"plus"}, Options{}); err != nil {
		t.Fatal(err)
	}
	ms, _ := run.ReadMetrics()
	if len(ms) != cfg.MaxSteps {
		t.Fatalf("%d logged iterations, want %d", len(ms), cfg.MaxSteps)
	}
	early := (ms[0].Extra["reward_mean"] + ms[1].Extra["reward_mean"] + ms[2].Extra["reward_mean"]) / 3
	late := (ms[9].Extra["reward_mean"] + ms[10].Extra["reward_mean"] + ms[11].Extra["reward_mean"]) / 3
	for _, k := range []string{"ref_kl", "approx_kl", "clip_fraction", "value_clip_fraction", "response_length", "perplexity", "reward_std", "entropy"} {
		if _, ok := ms[len(ms)-1].Extra[k]; !ok {
			t.Errorf("the monitors lack %s", k)
		}
	}
	t.Logf("reward %.3f -> %.3f; ref KL %.3f -> %.3f; length %.1f -> %.1f", early, late, ms[0].Extra["ref_kl"], ms[11].Extra["ref_kl"], ms[0].Extra["response_length"], ms[11].Extra["response_length"])
	if late < early+0.05 {
		t.Fatalf("PPO did not raise the reward: %.3f -> %.3f", early, late)
	}
	if fin, _ := run.ReadState(); fin.State != Done || fin.Final == "" {
		t.Fatalf("state %+v", fin)
	}
}

// No KL penalty and a large learning rate: the policy runs away from the reference and the collapse monitor
// stops the job, saying why, with the last checkpoint written under the target kept.
func TestPPOCollapseMonitorStops(t *testing.T) {
	rt, run, policy, prompts := ppoRun(t)
	cfg := PPOConfig{ModelNameOrPath: policy, PromptsPath: prompts, LearningRate: 3e-3, MaxSteps: 12, RolloutBatchSize: 16,
		MiniBatchSize: 8, NumPPOEpochs: 2, KLCoef: 0, MaxNewTokens: 12, KLTarget: 2, KLStopSteps: 2, SaveSteps: 1, Seed: 1}
	err := RunPPO(context.Background(), rt, run, cfg, wordReward{"plus"}, Options{})
	var collapse ErrCollapse
	if ms, _ := run.ReadMetrics(); err == nil {
		for _, m := range ms {
			t.Logf("step %d: ref KL %.3f reward %.3f ppl %.2f len %.1f ent %.3f", m.Step, m.Extra["ref_kl"], m.Extra["reward_mean"], m.Extra["perplexity"], m.Extra["response_length"], m.Extra["entropy"])
		}
	}
	if !errors.As(err, &collapse) || !strings.Contains(err.Error(), "ref KL") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want the collapse monitor's one-line stop", err)
	}
	st, _ := run.ReadState()
	if st.State != Failed || !strings.Contains(st.Error, "collapse monitor") {
		t.Fatalf("state %+v", st)
	}
	ms, _ := run.ReadMetrics()
	if st.Checkpoint != "" {
		var k int
		fmt.Sscanf(filepath.Base(st.Checkpoint), "step-%d", &k)
		if k < 1 || k > len(ms) || ms[k-1].Extra["ref_kl"] > cfg.KLTarget {
			t.Fatalf("kept checkpoint %s, written at ref KL %v over the target", st.Checkpoint, ms[k-1].Extra["ref_kl"])
		}
	}
	t.Logf("%v", err)
}

// TestPPOResumesAfterCancel: a run cancelled after a checkpoint resumes from it (weights, optimizer and the
// running reward statistics of ppo_state.json) and logs every iteration exactly once.
func TestPPOResumesAfterCancel(t *testing.T) {
	rt, run, policy, prompts := ppoRun(t)
	cfg := PPOConfig{ModelNameOrPath: policy, PromptsPath: prompts, LearningRate: 3e-4, MaxSteps: 4, RolloutBatchSize: 8,
		MiniBatchSize: 8, KLCoef: 0.02, MaxNewTokens: 8, RewardNormalize: true, Seed: 1, SaveSteps: 2}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := RunPPO(ctx, rt, run, cfg, wordReward{"plus"}, Options{OnMetrics: func(m *Metrics) {
		if m.Step == 2 {
			cancel()
		}
	}})
	if st, _ := run.ReadState(); st.State == Done {
		t.Fatalf("the cancelled run finished: %+v (err %v)", st, err)
	}
	ck, err := latestCheckpoint(run.Dir)
	if err != nil || ck == "" {
		t.Fatalf("no checkpoint after the cancel: %q %v", ck, err)
	}
	if _, err := os.Stat(filepath.Join(ck, "ppo_state.json")); err != nil {
		t.Fatalf("the checkpoint lacks the reward statistics: %v", err)
	}
	var log strings.Builder
	if err := RunPPO(context.Background(), rt, run, cfg, wordReward{"plus"}, Options{Resume: true, Log: &log}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "resumed from "+ck) {
		t.Fatalf("the second run did not resume from %s:\n%s", ck, log.String())
	}
	ms, _ := run.ReadMetrics()
	if len(ms) != cfg.MaxSteps {
		t.Fatalf("%d logged iterations, want %d", len(ms), cfg.MaxSteps)
	}
	for i, m := range ms {
		if m.Step != i+1 {
			t.Fatalf("iteration %d logged as step %d", i+1, m.Step)
		}
	}
	if st, _ := run.ReadState(); st.State != Done || st.Final == "" {
		t.Fatalf("state %+v", st)
	}
}

// cancelReward asks the run to cancel while it scores the given iteration, as /cancel from another process would.
type cancelReward struct {
	wordReward
	run   *Run
	calls *int
	at    int
}

func (c cancelReward) Score(ctx context.Context, samples []Sample) ([]float64, error) {
	if *c.calls++; *c.calls == c.at {
		c.run.RequestCancel()
	}
	return c.wordReward.Score(ctx, samples)
}

// A cancel requested mid-iteration stops the run before that iteration's update, keeping the previous step.
func TestPPOCancelsWithinAnIteration(t *testing.T) {
	rt, run, policy, prompts := ppoRun(t)
	cfg := PPOConfig{ModelNameOrPath: policy, PromptsPath: prompts, LearningRate: 3e-4, MaxSteps: 6, RolloutBatchSize: 8,
		MiniBatchSize: 8, KLCoef: 0.02, MaxNewTokens: 8, Seed: 1, SaveSteps: 10}
	calls := 0
	if err := RunPPO(context.Background(), rt, run, cfg, cancelReward{wordReward{"plus"}, run, &calls, 3}, Options{}); err != nil {
		t.Fatal(err)
	}
	st, _ := run.ReadState()
	ms, _ := run.ReadMetrics()
	if st.State != Cancelled || len(ms) != 2 {
		t.Fatalf("state %s after %d logged iterations: the cancel during iteration 3's scoring should end the run before its update", st.State, len(ms))
	}
	if ck, err := latestCheckpoint(run.Dir); err != nil || !strings.HasSuffix(ck, "step-000002") {
		t.Fatalf("checkpoint %q %v, want step 2's weights", ck, err)
	}
}
