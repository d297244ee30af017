package train

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// offlineData writes sums answered right, in full (the exact reward gives 1), and guessed wrong, in another
// form (0): two lines per question.
func offlineData(t testing.TB, dir string, n int) string {
	var recs []any
	for _, q := range sums(n) {
		for _, reply := range []string{q.answer, fmt.Sprintf("I would guess %d, maybe.", atoi(q.number)+1)} {
			recs = append(recs, map[string]any{"messages": []map[string]string{{"role": "user", "content": q.question}, {"role": "assistant", "content": reply}}, "answer": q.number})
		}
	}
	return writeJSONL(t, filepath.Join(dir, "offline.jsonl"), recs)
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// answerReward is 1 when the last number a response states is the sample's answer (the toy sums' checkable
// reward), else 0.
type answerReward struct{}

func (answerReward) Name() string { return "answer" }

func (answerReward) Score(_ context.Context, samples []Sample) ([]float64, error) {
	out := make([]float64, len(samples))
	for i, s := range samples {
		if nums := regexp.MustCompile(`[0-9]+`).FindAllString(s.Response, -1); len(nums) > 0 && nums[len(nums)-1] == s.Answer {
			out[i] = 1
		}
	}
	return out, nil
}

// TestALoLLearnsFromPositiveAdvantage: with a checkable reward, right answers get A > 0 and wrong ones A <= 0, the
// steps shrink to the positive fraction, and training raises the right answers' likelihood over the wrong ones'.
func TestALoLLearnsFromPositiveAdvantage(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data := offlineData(t, dir, 60)
	mdir := tinyModel(t, rt, dir, data)
	run, err := NewRun(filepath.Join(dir, "runs"), "alol")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ALoLConfig{ModelNameOrPath: mdir, DatasetPath: data, Algorithm: "a_lol", LearningRate: 1e-3, MaxSteps: 60,
		PerDeviceTrainBatchSize: 8, MaxResponseLength: 12, ValidationFraction: 0.1, EvalSteps: 10, SaveSteps: 10, Seed: 1}
	if err := RunALoL(context.Background(), rt, run, cfg, answerReward{}, Options{}); err != nil {
		t.Fatal(err)
	}
	adv, err := ReadAdvantages(filepath.Join(run.Dir, "advantages.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	positive := 0
	for i, a := range adv {
		if (a.Reward == 1) != (a.Advantage > 0) {
			t.Fatalf("example %d: reward %v, V %.3f, advantage %.3f: a right answer must have A > 0 and a wrong one A <= 0", i, a.Reward, a.Value, a.Advantage)
		}
		if a.Advantage > 0 {
			positive++
		}
	}
	st, _ := run.ReadState()
	wantSteps := int(float64(cfg.MaxSteps)*float64(positive)/float64(len(adv)) + 0.5)
	if st.State != Done || st.TotalSteps != wantSteps || st.Step != wantSteps {
		t.Fatalf("state %+v: want %d steps (%d of %d examples positive)", st, wantSteps, positive, len(adv))
	}
	ms, _ := run.ReadMetrics()
	last := ms[len(ms)-1]
	for _, k := range []string{"advantage_mean", "positive_fraction", "importance_weight_mean", "clip_fraction", "val_reward"} {
		if _, ok := last.Extra[k]; !ok {
			t.Errorf("the last step's metrics lack %s: %v", k, last.Extra)
		}
	}
	// Likelihood of right and wrong answers, before (the reference) and after.
	gap := func(dir string) float64 {
		lm, err := model.Load(rt, dir, model.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer lm.Close()
		exs, err := LoadOfflineData(data, lm.Tokenizer, 640, 64)
		if err != nil {
			t.Fatal(err)
		}
		s := rt.NewScope().NoGrad()
		defer s.Close()
		logp, mask := responseLogprobs(s, lm.Model, exs)
		seq := s.Float32s(s.Sum(s.Mul(logp, mask), 1, false))
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		var right, wrong float64
		for i, v := range seq {
			if i%2 == 0 {
				right += float64(v)
			} else {
				wrong += float64(v)
			}
		}
		t.Logf("%s: mean log p right %.3f, wrong %.3f", filepath.Base(dir), right/float64(len(seq)/2), wrong/float64(len(seq)/2))
		return (right - wrong) / float64(len(seq)/2)
	}
	before, after := gap(mdir), gap(st.Final)
	t.Logf("log p(right) - log p(wrong): %.3f before, %.3f after %d steps; %d of %d positive", before, after, st.Step, positive, len(adv))
	if after < before+5 {
		t.Fatalf("A-LoL did not prefer the positive-advantage answers: gap %.3f -> %.3f", before, after)
	}
}

// TestALoLBadRewardKeepsCheckpoint: a reward program that starts crashing mid-run stops the job with a line that
// names it, and the last checkpoint stays.
func TestALoLBadRewardKeepsCheckpoint(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	mdir := tinyModel(t, rt, dir, chatData(t, dir, 50))
	data := offlineData(t, dir, 20)
	prog := filepath.Join(dir, "reward.sh")
	count := filepath.Join(dir, "calls")
	script := fmt.Sprintf("#!/bin/sh\nn=$(cat %[1]s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %[1]s\nif [ $n -ge 3 ]; then echo 'reward server gone' >&2; exit 3; fi\nwhile read -r line; do echo 0.5; done\n", count)
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	run, err := NewRun(filepath.Join(dir, "runs"), "alol")
	if err != nil {
		t.Fatal(err)
	}
	// wbc needs no value head: calls are the training set, then a validation every 5 steps.
	cfg := ALoLConfig{ModelNameOrPath: mdir, DatasetPath: data, Algorithm: "wbc", LearningRate: 1e-3, MaxSteps: 20,
		PerDeviceTrainBatchSize: 4, MaxResponseLength: 8, EvalSteps: 5, SaveSteps: 5, Seed: 1}
	err = RunALoL(context.Background(), rt, run, cfg, CommandReward{Program: prog}, Options{})
	if err == nil || !strings.Contains(err.Error(), "cmd:"+prog) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want one line naming the reward program", err)
	}
	st, _ := run.ReadState()
	if st.State != Failed || st.Checkpoint == "" {
		t.Fatalf("state %+v: want failed with the last checkpoint kept", st)
	}
	if _, err := os.Stat(filepath.Join(st.Checkpoint, "weights.safetensors")); err != nil {
		t.Fatalf("the last checkpoint is gone: %v", err)
	}
	t.Logf("stopped: %v; kept %s", err, filepath.Base(st.Checkpoint))
}

// tinyChatLM is a tiny chat model trained on nothing, loaded on the CPU, for the data readers' tests.
func tinyChatLM(t *testing.T, dir string) *model.LM {
	rt := torchtest.Runtime(t)
	lm, err := model.Load(rt, tinyModel(t, rt, dir, chatData(t, dir, 20)), model.Options{Device: torch.CPU})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lm.Close)
	return lm
}

func TestOfflineDataBadInput(t *testing.T) {
	dir := t.TempDir()
	lm := tinyChatLM(t, dir)
	ok := `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}`
	cases := map[string]string{
		ok + "\n" + `{"messages": [{"role": "user", "content": "hi"}]}` + "\n": "offline.jsonl:2: needs \"messages\" ending with the assistant",
		ok + "\n{broken\n": "offline.jsonl:2:",
		ok + "\n" + strings.Replace(ok, "}]}", `}], "reward": "high"}`, 1) + "\n": "offline.jsonl:2:",
		ok + "\n": "1 examples; A-LoL needs at least 2",
		`{"messages": [{"role": "assistant", "content": "hello"}]}` + "\n" + ok + "\n" + ok + "\n": "offline.jsonl:1:",
	}
	for body, want := range cases {
		p := filepath.Join(dir, "offline.jsonl")
		os.WriteFile(p, []byte(body), 0o644)
		_, err := LoadOfflineData(p, lm.Tokenizer, 640, 128)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want one line with %q", body, err, want)
		}
	}
}

// keel axis extract's rollouts are A-LoL data as they are: system prompt and question as the prompt, the
// response as the action, the same tokens as the equivalent messages line.
func TestOfflineDataReadsExtractionRollouts(t *testing.T) {
	dir := t.TempDir()
	lm := tinyChatLM(t, dir)
	rollouts := filepath.Join(dir, "pirate.jsonl")
	os.WriteFile(rollouts, []byte(`{"role":"pirate","system":"You are a pirate.","question":"What is two plus three?","response":"Arr, five.","score":3,"tokens":4}
{"role":"pirate","question":"Who are you?","response":"A pirate.","score":2,"tokens":3}
`), 0o644)
	messages := filepath.Join(dir, "messages.jsonl")
	os.WriteFile(messages, []byte(`{"messages":[{"role":"system","content":"You are a pirate."},{"role":"user","content":"What is two plus three?"},{"role":"assistant","content":"Arr, five."}]}
{"messages":[{"role":"user","content":"Who are you?"},{"role":"assistant","content":"A pirate."}]}
`), 0o644)
	got, err := LoadOfflineData(rollouts, lm.Tokenizer, 640, 128)
	if err != nil {
		t.Fatal(err)
	}
	want, err := LoadOfflineData(messages, lm.Tokenizer, 640, 128)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if !slices.Equal(got[i].Prompt, want[i].Prompt) || !slices.Equal(got[i].Response, want[i].Response) || got[i].Reward != nil {
			t.Fatalf("rollout %d: prompt %v response %v reward %v; as messages: %v %v", i, got[i].Prompt, got[i].Response, got[i].Reward, want[i].Prompt, want[i].Response)
		}
	}
}

// TestALoLValueFitSharedThroughCache: a second run on the same data, seed and split reads V_ref from the score
// cache instead of fitting the value head again, and gets the same advantages.
func TestALoLValueFitSharedThroughCache(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data := offlineData(t, dir, 30)
	mdir := tinyModel(t, rt, dir, data)
	var advs [][]AdvantageRecord
	var logs []string
	for _, alg := range []string{"a_lol_seq", "a_lol"} {
		run, err := NewRun(filepath.Join(dir, "runs"), alg)
		if err != nil {
			t.Fatal(err)
		}
		var log strings.Builder
		cfg := ALoLConfig{ModelNameOrPath: mdir, DatasetPath: data, Algorithm: alg, LearningRate: 1e-3, MaxSteps: 2,
			PerDeviceTrainBatchSize: 4, MaxResponseLength: 12, ValidationFraction: 0.2, EvalSteps: 10, SaveSteps: 10, Seed: 3,
			ScoreCache: filepath.Join(dir, "scores.json")}
		if err := RunALoL(context.Background(), rt, run, cfg, answerReward{}, Options{Log: &log}); err != nil {
			t.Fatal(err)
		}
		adv, err := ReadAdvantages(filepath.Join(run.Dir, "advantages.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		advs, logs = append(advs, adv), append(logs, log.String())
	}
	if strings.Contains(logs[0], "read from") || !strings.Contains(logs[1], "V_ref of") {
		t.Fatalf("the first run must fit the value head and the second read it:\nfirst:\n%s\nsecond:\n%s", logs[0], logs[1])
	}
	if len(advs[0]) != len(advs[1]) {
		t.Fatalf("%d vs %d advantages", len(advs[0]), len(advs[1]))
	}
	for i := range advs[0] {
		if advs[0][i].Value != advs[1][i].Value || advs[0][i].Advantage != advs[1][i].Advantage {
			t.Fatalf("example %d: V %v / A %v first, V %v / A %v from the cache", i, advs[0][i].Value, advs[0][i].Advantage, advs[1][i].Value, advs[1][i].Advantage)
		}
	}
}
