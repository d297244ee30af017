package bench

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/internal/cli"
)

// `keel devcheck forward` on a reward model writes its score head's outputs beside the hidden states: the values
// the device check holds to transformers' *ForSequenceClassification logits.
func TestDevcheckForwardWritesRewardScores(t *testing.T) {
	rt := torchtest.Runtime(t)
	m, err := model.NewRandom(rt, model.TinyConfigs()["qwen3"], model.Options{}, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.MakeClassifier(2, 5); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := m.Save(dir, torch.Float32); err != nil {
		t.Fatal(err)
	}
	ids := []int{1, 7, 9, 40, 3}
	want, err := m.Scores([][]int{ids}, 1)
	if err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(t.TempDir(), "rm")
	var stdoutB, stderrB strings.Builder
	code := cli.Main("keel", Commands(), []string{"devcheck", "forward", "--model", dir, "--ids", "1,7,9,40,3", "--out", prefix}, &stdoutB, &stderrB)
	stdout := stdoutB.String()
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderrB.String())
	}
	var metas []map[string]int
	if err := json.Unmarshal([]byte(stdout), &metas); err != nil || len(metas) != 1 || metas[0]["S"] != 2 {
		t.Fatalf("metadata %q: %v", stdout, err)
	}
	raw, err := os.ReadFile(prefix + ".0.scores.f32")
	if err != nil {
		t.Fatal(err)
	}
	got := safetensors.F32s(raw)
	if len(got) != 2 || math.Abs(float64(got[0]-want[0][0])) > 1e-5 || math.Abs(float64(got[1]-want[0][1])) > 1e-5 {
		t.Fatalf("scores %v, the model's %v", got, want[0])
	}
}
