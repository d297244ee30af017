package model_test

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// Interventions on chosen rows: one greedy batch of eight requests, each with interventions of its own on its
// row, generates for every row exactly what the request generates alone (model.Batch's test covers rows joining
// later, with sampling of their own).
func TestRowsOwnInterventions(t *testing.T) {
	rt := torchtest.Runtime(t)
	cfg := model.TinyConfigs()["llama"]
	m, err := model.NewRandom(rt, cfg, model.Options{}, 21)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	dir := unitVector(4, cfg.HiddenSize)
	// Request i's interventions: none, steering of several strengths at several layers, caps floor and ceiling.
	own := func(i int) []model.Intervention {
		switch i % 4 {
		case 0:
			return nil
		case 1:
			return []model.Intervention{{Layer: i % cfg.NumHiddenLayers, Kind: model.Add, Vectors: [][]float32{dir}, Coeff: float64(3 * i)}}
		case 2:
			return []model.Intervention{{Layer: 1, Kind: model.Cap, Vectors: [][]float32{dir}, Tau: float64(i)}}
		}
		return []model.Intervention{{Layer: 0, Kind: model.Add, Vectors: [][]float32{dir}, Coeff: -4},
			{Layer: 2, Kind: model.Cap, Vectors: [][]float32{dir}, Tau: -1, Ceiling: true}}
	}
	prompts := make([][]int, 8)
	for i := range prompts {
		prompts[i] = testPrompt(5+3*i, cfg.VocabSize, 30+i)
	}
	var batchList []model.Intervention
	for i := range prompts {
		for _, iv := range own(i) {
			iv.Rows = []int{i}
			batchList = append(batchList, iv)
		}
	}
	batched, err := m.Generate(context.Background(), prompts, model.GenerateConfig{MaxTokens: 24, Hooks: model.NewHooks(batchList...)})
	if err != nil {
		t.Fatal(err)
	}
	differ := 0
	for i, p := range prompts {
		alone, err := m.Generate(context.Background(), [][]int{p}, model.GenerateConfig{MaxTokens: 24, Hooks: model.NewHooks(own(i)...)})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(alone[0].IDs, batched[i].IDs) {
			t.Errorf("request %d: alone %v, in the batch %v", i, alone[0].IDs, batched[i].IDs)
		}
		plain, err := m.Generate(context.Background(), [][]int{p}, model.GenerateConfig{MaxTokens: 24})
		if err != nil {
			t.Fatal(err)
		}
		if own(i) != nil && !slices.Equal(plain[0].IDs, alone[0].IDs) {
			differ++
		}
	}
	if differ < 5 {
		t.Errorf("the interventions changed only %d of the 6 requests that have some", differ)
	}
}

// unitVector is a random direction of d values drawn from seed, of norm 1.
func unitVector(seed uint64, d int) []float32 {
	rng := rand.New(rand.NewPCG(seed, seed))
	u := make([]float32, d)
	var norm float64
	for i := range u {
		u[i] = float32(rng.NormFloat64())
		norm += float64(u[i]) * float64(u[i])
	}
	for i := range u {
		u[i] /= float32(math.Sqrt(norm))
	}
	return u
}
