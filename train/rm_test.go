package train

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/model/modeltest"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// A reward model made from a causal LM keeps its decoder and gains a one-output score head; PPO-max's critic
// started from it gives, at every position, the reward model's score of the text up to that position (the trunk
// is causal), and names its weights apart from the policy's.
func TestCriticStartsFromTheRewardModel(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	lmDir, lm := tinyLM(t, rt, dir)
	if err := lm.MakeClassifier(1, 9); err != nil {
		t.Fatal(err)
	}
	rmDir := filepath.Join(dir, "rm")
	if err := lm.Save(rmDir, torch.Float32); err != nil {
		t.Fatal(err)
	}
	lm.Close()
	if err := finishModelFolder(rmDir, lmDir); err != nil {
		t.Fatal(err)
	}
	c, err := newModelCritic(rt, rmDir, model.Options{}, tokenizerOf(t, rt, lmDir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	for _, n := range c.params() {
		if !strings.HasPrefix(n.Name, "critic.") {
			t.Fatalf("critic weight %s shares the policy's names", n.Name)
		}
	}
	ids := []int{1, 17, 40, 99, 230, 7, 64}
	s := rt.NewScope().NoGrad()
	defer s.Close()
	v := s.Float32s(c.values(s, torch.Tensor{}, [][]int{ids}, false))
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= len(ids); n++ {
		want, err := c.rm.Scores([][]int{ids[:n]}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(float64(v[n-1]-want[0][0])) > 1e-4 {
			t.Fatalf("position %d: critic %v, reward model on the prefix %v", n-1, v[n-1], want[0][0])
		}
	}
	// A reward model of another vocabulary cannot read the policy's ids.
	other := modeltest.Stories(t)
	if _, err := newModelCritic(rt, rmDir, model.Options{}, other.Tokenizer); err == nil || !strings.Contains(err.Error(), "vocabulary") {
		t.Fatalf("a reward model of another vocabulary: %v", err)
	}
	// A causal LM is not a critic to start from.
	if _, err := newModelCritic(rt, lmDir, model.Options{}, nil); err == nil || !strings.Contains(err.Error(), "reward model") {
		t.Fatalf("a causal LM as value_model_path: %v", err)
	}
}

// Preference files: keel's prompt-plus-replies lines and TRL's conversational ones load; a line without both
// sides, or whose side does not end with the assistant, names file:line.
func TestLoadPreferences(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	_, lm := tinyLM(t, rt, dir)
	defer lm.Close()
	user := []map[string]string{{"role": "user", "content": "What is two plus two?"}}
	line := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	good := line(map[string]any{"messages": user, "chosen": "Four.", "rejected": "Five."}) + "\n" +
		line(map[string]any{"chosen": append(user, map[string]string{"role": "assistant", "content": "Four."}),
			"rejected": append(user, map[string]string{"role": "assistant", "content": "Five."})}) + "\n"
	path := filepath.Join(dir, "pairs.jsonl")
	os.WriteFile(path, []byte(good), 0o644)
	pairs, err := LoadPreferences(path, lm.Tokenizer, 256)
	if err != nil {
		t.Fatal(err)
	}
	if len(pairs) != 2 || !slices.Equal(pairs[0].Chosen, pairs[1].Chosen) || slices.Equal(pairs[0].Chosen, pairs[0].Rejected) {
		t.Fatalf("the two formats disagree: %v", pairs)
	}
	for _, bad := range []string{
		line(map[string]any{"messages": user, "chosen": "Four."}),
		line(map[string]any{"chosen": "Four.", "rejected": "Five."}),
		line(map[string]any{"chosen": user, "rejected": user}),
		`{"messages": [`,
	} {
		os.WriteFile(path, []byte(good+bad+"\n"), 0o644)
		_, err := LoadPreferences(path, lm.Tokenizer, 256)
		if err == nil || !strings.Contains(err.Error(), "pairs.jsonl:3") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

// tinyLM writes a tiny chat model under dir and loads it.
func tinyLM(t *testing.T, rt *torch.Runtime, dir string) (string, *model.LM) {
	t.Helper()
	lmDir := tinyModel(t, rt, dir, chatData(t, dir, 20))
	lm, err := model.Load(rt, lmDir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return lmDir, lm
}

// tokenizerOf is the tokenizer of the model folder dir.
func tokenizerOf(t *testing.T, rt *torch.Runtime, dir string) tokenizer.Tokenizer {
	t.Helper()
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
