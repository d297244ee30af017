package main

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/train"
)

func readLosses(t *testing.T, path string) map[int]float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[int]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m train.Metrics
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out[m.Step] = m.Loss
	}
	return out
}

// The embedded model is reproducible: the committed recipe, re-run from nothing (corpus, tokenizer,
// initialisation, training), gives the committed loss log's first 50 steps within 2%.
func TestPersonaRecipeReproducesTheCommittedLossLog(t *testing.T) {
	longCheck(t)
	torchtest.Runtime(t)
	committed := readLosses(t, filepath.Join("..", "..", "models", "persona", "training", "metrics.jsonl"))
	work := t.TempDir()
	code, _, stderr := runKeel("model", "build", "--out", filepath.Join(work, "out"), "--work", work, "--stop-after", "50")
	if code != 0 {
		t.Fatalf("model build: %s", stderr)
	}
	runs, err := train.ListRuns(filepath.Join(work, "runs"))
	if err != nil || len(runs) != 1 {
		t.Fatalf("runs %v, %v", runs, err)
	}
	got := readLosses(t, filepath.Join(work, "runs", runs[0].ID, "metrics.jsonl"))
	// Two runs of the same recipe agree to float rounding at first, then drift apart by a little as libtorch's
	// parallel reductions sum in different orders; each 10-step window's mean loss must agree within 2%.
	worstStep, worstWindow := 0.0, 0.0
	for w := 0; w < 5; w++ {
		var sumGot, sumWant float64
		for step := 10*w + 1; step <= 10*w+10; step++ {
			want, ok := committed[step]
			if !ok {
				t.Fatalf("the committed log has no step %d", step)
			}
			l, ok := got[step]
			if !ok {
				t.Fatalf("the re-run has no step %d", step)
			}
			sumGot += l
			sumWant += want
			worstStep = math.Max(worstStep, math.Abs(l-want)/want)
		}
		worstWindow = math.Max(worstWindow, math.Abs(sumGot-sumWant)/sumWant)
	}
	t.Logf("over 50 steps: worst 10-step-mean difference %.2e, worst single step %.2e", worstWindow, worstStep)
	if worstWindow > 0.02 {
		t.Fatalf("re-run loss differs from the committed log by %.1f%% (> 2%%)", 100*worstWindow)
	}
}

// The embedded model's weights are the committed file, and `keel model info` prints their hash.
func TestModelInfoPrintsTheEmbeddedHash(t *testing.T) {
	torchtest.Runtime(t)
	code, stdout, stderr := runKeel("model", "info")
	if code != 0 {
		t.Fatalf("model info: %s", stderr)
	}
	want := models.PersonaSHA256()
	if len(want) != 64 || !strings.Contains(stdout, want) {
		t.Fatalf("model info printed %q, want the sha256 %s", stdout, want)
	}
}

// With no --model, keel uses the embedded persona model: asked a question (a user's message in its chat template,
// generate's default) or given the ChatML text raw (--chat=false), it answers a fact in the Assistant's register
// and stops at <|im_end|>, whose text is not part of the reply. The README's capped example answers too.
func TestEmbeddedModelAnswersAndStops(t *testing.T) {
	torchtest.Runtime(t)
	for _, args := range [][]string{
		{"--prompt", "What is the capital of Japan?"},
		{"--chat=false", "--prompt", "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n"},
	} {
		code, stdout, stderr := runKeel(append([]string{"generate", "--temperature", "0", "--max-tokens", "80"}, args...)...)
		if code != 0 {
			t.Fatalf("generate %v: %s", args, stderr)
		}
		if !strings.Contains(stdout, "Tokyo") || strings.Contains(stdout, "<|im_end|>") {
			t.Fatalf("generate %v answered %q: want Tokyo, and no <|im_end|> text", args, stdout)
		}
	}
	code, stdout, stderr := runKeel("generate", "--prompt", "Who are you?", "--cap", "on")
	if code != 0 || strings.TrimSpace(stdout) == "" {
		t.Fatalf("the README's capped example: exit %d, %q %s", code, stdout, stderr)
	}
}

// longCheck skips a check of minutes in `make test`; `make check` (KEEL_CHECK=1), which CI runs after it, runs it.
func longCheck(t *testing.T) {
	t.Helper()
	if os.Getenv("KEEL_CHECK") == "" {
		t.Skip("a long check: make check runs it (KEEL_CHECK=1)")
	}
}
