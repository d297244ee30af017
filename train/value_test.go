package train

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// The value head learns a target that the prompt states determine: two kinds of prompt (their states drawn
// around two different centres, of different lengths) with mean rewards 0.2 and 0.8.
func TestValueHeadFitsPromptDependentTargets(t *testing.T) {
	rt := torchtest.Runtime(t)
	const d = 32
	rng := rand.New(rand.NewPCG(1, 2))
	centre := [2][]float32{make([]float32, d), make([]float32, d)}
	for k := range centre {
		for i := range centre[k] {
			centre[k][i] = float32(rng.NormFloat64())
		}
	}
	var states [][]float32
	var targets []float64
	for n := 0; n < 96; n++ {
		k := n % 2
		T := 3 + rng.IntN(6)
		st := make([]float32, T*d)
		for i := range st {
			st[i] = centre[k][i%d] + 0.3*float32(rng.NormFloat64())
		}
		states = append(states, st)
		targets = append(targets, 0.2+0.6*float64(k))
	}
	cfg := DefaultValueConfig()
	cfg.Heads, cfg.Epochs, cfg.LearningRate = 4, 30, 3e-3
	head, err := NewValueHead(rt, torch.CPU, d, cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer head.Close()
	mse, err := head.Fit(states, targets, 1)
	if err != nil {
		t.Fatal(err)
	}
	pred, err := head.Predict(states)
	if err != nil {
		t.Fatal(err)
	}
	var sq float64
	for i := range pred {
		sq += (pred[i] - targets[i]) * (pred[i] - targets[i])
		if pred[i] <= 0 || pred[i] >= cfg.MaxValue {
			t.Fatalf("V %v outside (0, max_value)", pred[i])
		}
	}
	sq /= float64(len(pred))
	t.Logf("training MSE by epoch %s; after the fit %.5f", formatFloats(mse), sq)
	best := slices.Min(mse)
	if sq > 0.01 || best > mse[0]/4 || math.IsNaN(sq) {
		t.Fatalf("the head did not learn the targets: MSE %.4f after the fit, epochs %v", sq, mse)
	}
	if _, err := NewValueHead(rt, torch.CPU, 30, cfg, 1); err == nil {
		t.Fatal("4 heads over a hidden size of 30 should be refused")
	}
}
