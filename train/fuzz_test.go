package train

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/tokenizer"
)

// FuzzDataFiles: the three JSONL readers (offline RL data, PPO prompts, SFT data) never panic on any file, and
// every refusal names the file.
func FuzzDataFiles(f *testing.F) {
	tok, err := tokenizer.Load(filepath.Join("..", "models", "persona"))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}],"reward":0.5}` + "\n" +
			`{"messages":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}],"answer":"4"}`,
		`{"messages":[{"role":"system","content":"You are a pirate."},{"role":"user","content":"hi"}]}`,
		`{"text":"plain text for SFT"}`,
		`{"messages":[{"role":"assistant","content":""}],"reward":NaN}`,
		`{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}],"reward":1e999}`,
		"\n\n{\"messages\": []}\n",
		`{"messages":[{"role":"tool","content":"?"},{"role":"assistant","content":"ok"}]}`,
		"not json",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, content string) {
		path := filepath.Join(t.TempDir(), "data.jsonl")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		named := func(what string, err error) {
			if err != nil && !strings.Contains(err.Error(), path) {
				t.Fatalf("%s: the error does not name the file: %v", what, err)
			}
		}
		_, err := LoadOfflineData(path, tok, 64, 16)
		named("offline data", err)
		_, err = LoadPrompts(path)
		named("prompts", err)
		_, err = LoadDataset(path, tok)
		named("SFT data", err)
	})
}

// FuzzParseReward: any --reward spec is a weighted sum of known rewards with finite weights, or one error.
func FuzzParseReward(f *testing.F) {
	for _, s := range []string{"one", "0.7*one+0.3*half:x", "cmd:./score.sh", "half", "NaN*one", "2*", "+", "half:", "cmd:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		r, err := ParseReward(spec, testNames)
		if err != nil {
			return
		}
		w, ok := r.(WeightedReward)
		if !ok || len(w.Parts) == 0 || len(w.Parts) != len(w.Weights) {
			t.Fatalf("%q: %#v", spec, r)
		}
		for i, x := range w.Weights {
			if math.IsNaN(x) || math.IsInf(x, 0) || w.Parts[i] == nil {
				t.Fatalf("%q: term %d weight %v part %v", spec, i, x, w.Parts[i])
			}
		}
	})
}
