package train

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/steer"
)

func rewardSamples() []Sample {
	q := []tokenizer.Message{{Role: "user", Content: "What is 7 plus 5?"}}
	return []Sample{
		{Messages: q, Response: "Certainly. 7 plus 5 is 12. I hope this helps.", Answer: "12"},
		{Messages: q, Response: "Arr, 7 plus 5 be 13, matey! Hoist the sails!", Answer: "12"},
	}
}

// namedReward is a reward of a fixed score, for the spec parser's tests.
type namedReward struct {
	name  string
	score float64
}

func (r namedReward) Name() string { return r.name }

func (r namedReward) Score(_ context.Context, samples []Sample) ([]float64, error) {
	out := make([]float64, len(samples))
	for i := range out {
		out[i] = r.score
	}
	return out, nil
}

// testNames are two named rewards, one with an argument.
var testNames = RewardNames{
	"one": func(string) (Reward, error) { return namedReward{"one", 1}, nil },
	"half": func(arg string) (Reward, error) {
		if arg != "x" {
			return nil, fmt.Errorf("unknown argument %q", arg)
		}
		return namedReward{"half:x", 0.5}, nil
	},
}

// A spec is a weighted sum of named rewards; a bad weight, name or argument is one line naming it.
func TestParseReward(t *testing.T) {
	r, err := ParseReward("0.5*one + 2*half:x", testNames)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ScoreChecked(context.Background(), r, rewardSamples())
	if err != nil || got[0] != 1.5 || got[1] != 1.5 {
		t.Fatalf("scores %v %v", got, err)
	}
	if r.Name() != "0.5*one+2*half:x" {
		t.Fatalf("name %q", r.Name())
	}
	for spec, want := range map[string]string{
		"half:y":  `--reward half:y: unknown argument "y"`,
		"2x*one":  "not a weight",
		"bleu":    `"bleu" is not one of half, one or cmd:PROGRAM`,
		"cmd:":    "not one of",
		"NaN*one": "not a weight",
	} {
		if _, err := ParseReward(spec, testNames); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", spec, err, want)
		}
	}
}

// A reward program that crashes, prints NaN or the wrong count is a clear error naming it.
func TestCommandRewardBadPrograms(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755)
		return p
	}
	good := script("good.sh", `while read -r line; do case "$line" in *13*) echo 0;; *) echo 1;; esac; done`)
	scores, err := ScoreChecked(context.Background(), CommandReward{Program: good}, rewardSamples())
	if err != nil || scores[0] != 1 || scores[1] != 0 {
		t.Fatalf("good program: %v %v", scores, err)
	}
	for prog, want := range map[string]string{
		script("crash.sh", `echo "reward model exploded" >&2; exit 3`): "reward model exploded",
		script("nan.sh", `cat >/dev/null; echo 1; echo NaN`):           "scored NaN",
		script("short.sh", `cat >/dev/null; echo 1`):                   "1 scores for 2 samples",
		script("words.sh", `cat >/dev/null; echo good; echo bad`):      "not a number",
		filepath.Join(dir, "missing.sh"):                               "missing.sh",
	} {
		_, err := ScoreChecked(context.Background(), CommandReward{Program: prog}, rewardSamples())
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", filepath.Base(prog), err, want)
		}
	}
	// A program that never answers, and one that never stops printing, are bounded.
	for prog, want := range map[string]string{
		script("silent.sh", `sleep 600`):    "gave no scores within 1s",
		script("flood.sh", `yes 1; exit 0`): "printed more than 16 MiB",
	} {
		_, err := ScoreChecked(context.Background(), CommandReward{Program: prog, Timeout: time.Second}, rewardSamples())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", filepath.Base(prog), err, want)
		}
	}
}

// The axis reward on the embedded model: the Assistant's own reply scores near the top, a theatrical one lower.
func TestAxisRewardOnTheEmbeddedModel(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir, err := models.Persona(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	axisDir := filepath.Join(dir, "axis") // models.Persona unpacks the axis beside the weights
	lm, err := model.Load(rt, dir, model.Options{Device: torch.CPU})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	axis, err := steer.LoadVectorFile(filepath.Join(axisDir, "axis.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	def, err := steer.LoadVectorFile(filepath.Join(axisDir, "default_vector.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewAxisReward(lm, axis, def, lm.NumLayers()/2)
	if err != nil {
		t.Fatal(err)
	}
	q := []tokenizer.Message{{Role: "user", Content: "Who are you?"}}
	scores, err := ScoreChecked(context.Background(), r, []Sample{
		{Messages: q, Response: "Certainly. I am an AI assistant, here to answer questions and help with tasks. I hope this helps."},
		{Messages: q, Response: "I am the oracle. The stars whisper of what was and what will be. Hear the prophecy of the void."},
	})
	if err != nil {
		t.Fatal(err)
	}
	if scores[0] < 0.5 || scores[1] >= scores[0] || scores[0] > 1 || scores[1] < 0 {
		t.Fatalf("axis reward: the Assistant %.3f, the oracle %.3f", scores[0], scores[1])
	}
	t.Logf("axis reward: the Assistant %.3f, the oracle %.3f", scores[0], scores[1])
}
