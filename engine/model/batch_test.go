package model_test

import (
	"context"
	"slices"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// Rows join a running batch at different steps (into free slots, one into a slot another row left), each with its
// own interventions, sampling and length: every row generates exactly what its request generates alone, and its
// records are its own interventions'.
func TestBatchRowsJoinAndLeave(t *testing.T) {
	rt := torchtest.Runtime(t)
	cfg := model.TinyConfigs()["qwen3"]
	m, err := model.NewRandom(rt, cfg, model.Options{}, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	u := unitVector(2, cfg.HiddenSize)
	type request struct {
		joinAt    int // the batch step it arrives at
		prompt    []int
		ivs       []model.Intervention
		sampling  model.Sampling
		maxTokens int
	}
	reqs := []request{
		{0, testPrompt(12, cfg.VocabSize, 1), nil, model.Sampling{}, 20},
		{0, testPrompt(7, cfg.VocabSize, 2), []model.Intervention{{Layer: 1, Kind: model.Add, Vectors: [][]float32{u}, Coeff: 4}}, model.Sampling{}, 9},
		{3, testPrompt(10, cfg.VocabSize, 3), []model.Intervention{{Layer: 0, Kind: model.Cap, Vectors: [][]float32{u}, Tau: 1}, {Layer: 2, Kind: model.Capture, Vectors: [][]float32{u}}}, model.Sampling{Temperature: 0.8, TopP: 0.9, Seed: 5}, 15},
		{5, testPrompt(4, cfg.VocabSize, 4), nil, model.Sampling{Temperature: 1, Seed: 9}, 12},
		{12, testPrompt(15, cfg.VocabSize, 5), []model.Intervention{{Layer: 2, Kind: model.Add, Vectors: [][]float32{u}, Coeff: -3}}, model.Sampling{}, 10},
	}
	// One more asks request 2's interventions: the two rows share them while both decode.
	reqs = append(reqs, request{4, testPrompt(6, cfg.VocabSize, 6), reqs[2].ivs, model.Sampling{}, 8})
	slices.SortStableFunc(reqs, func(a, b request) int { return a.joinAt - b.joinAt })
	b, err := m.NewBatch(4, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make([][]int, len(reqs))
	records := make([]int, len(reqs))
	slotOf := map[int]int{} // slot -> request
	pending := slices.Clone(reqs)
	next := 0
	for step := 0; next < len(reqs) || b.Live() > 0; step++ {
		for next < len(reqs) && reqs[next].joinAt <= step && b.Fits(len(reqs[next].prompt), reqs[next].maxTokens) {
			r := pending[next]
			st, err := b.Join(r.prompt, r.ivs, r.sampling, r.maxTokens)
			if err != nil {
				t.Fatal(err)
			}
			slotOf[st.Slot] = next
			got[next] = append(got[next], st.ID)
			next++
		}
		steps, err := b.Step()
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range steps {
			i := slotOf[st.Slot]
			if len(got[i]) >= reqs[i].maxTokens {
				continue
			}
			got[i] = append(got[i], st.ID)
			records[i] += len(st.Records)
			if len(got[i]) == reqs[i].maxTokens {
				b.Leave(st.Slot)
			}
		}
		if step > 200 {
			t.Fatal("the batch never emptied")
		}
	}
	for i, r := range reqs {
		alone, err := m.Generate(context.Background(), [][]int{r.prompt}, model.GenerateConfig{MaxTokens: r.maxTokens, Hooks: model.NewHooks(r.ivs...), Sampling: r.sampling})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(alone[0].IDs, got[i]) {
			t.Errorf("request %d (joined at step %d): batch %v, alone %v", i, r.joinAt, got[i], alone[0].IDs)
		}
		yields := 0
		for _, iv := range r.ivs {
			if iv.Kind != model.Add {
				yields++
			}
		}
		if want := yields * (r.maxTokens - 1); records[i] != want {
			t.Errorf("request %d: %d records over its steps, want %d", i, records[i], want)
		}
	}
}
