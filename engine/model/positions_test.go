package model_test

import (
	"context"
	"math"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// A steer on generated tokens only leaves the prompt's positions before the last as an unsteered run computes
// them (a capture there records the same numbers), changes what the prompt's last position chooses (it acts
// there), differs from steering every position, and is the same as steering every position when the prompt is
// one token. A batch row with it generates what Generate does.
func TestInterventionsOnGeneratedTokensOnly(t *testing.T) {
	rt := torchtest.Runtime(t)
	cfg := model.TinyConfigs()["llama"]
	m, err := model.NewRandom(rt, cfg, model.Options{}, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	u := unitVector(3, cfg.HiddenSize)
	capture := model.Intervention{Layer: 2, Kind: model.Capture, Vectors: [][]float32{u}}
	steer := model.Intervention{Layer: 1, Kind: model.Add, Vectors: [][]float32{u}, Coeff: 6}
	prompt := testPrompt(9, cfg.VocabSize, 7)
	type run struct {
		ids       []int
		first     float64 // the first reply token's log-probability
		promptRec []float32
	}
	gen := func(prompt []int, ivs ...model.Intervention) run {
		var r run
		_, err := m.Generate(context.Background(), [][]int{prompt}, model.GenerateConfig{MaxTokens: 8, Hooks: model.NewHooks(ivs...),
			Sampling: model.Sampling{Logprobs: true},
			OnStep: func(st model.Step) (bool, error) {
				r.ids = append(r.ids, st.ID)
				if st.Index == 0 {
					r.first = st.Logprobs.Chosen.Logprob
				}
				return false, nil
			},
			PromptRecords: func(_ int, recs [][]model.Record) {
				for _, pos := range recs {
					for _, rec := range pos {
						if rec.Kind == model.Capture {
							r.promptRec = append(r.promptRec, rec.Values...)
						}
					}
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	only := steer
	only.GeneratedOnly = true
	none, all, gen1 := gen(prompt, capture), gen(prompt, steer, capture), gen(prompt, only, capture)
	if len(gen1.promptRec) != len(prompt)-1 || len(none.promptRec) != len(prompt)-1 {
		t.Fatalf("prompt records: %d and %d for %d positions before the last", len(gen1.promptRec), len(none.promptRec), len(prompt)-1)
	}
	for i := range none.promptRec {
		if math.Abs(float64(gen1.promptRec[i]-none.promptRec[i])) > 1e-5 { // a pass of 8 positions against one of 9: rounding only
			t.Fatalf("position %d of the prompt: %v steered on generated tokens only, %v unsteered", i, gen1.promptRec[i], none.promptRec[i])
		}
		if math.Abs(float64(all.promptRec[i]-none.promptRec[i])) < 1e-3 && i > 0 {
			t.Fatalf("position %d: steering every position did not change it (the test shows nothing)", i)
		}
	}
	if gen1.first == none.first || gen1.first == all.first {
		t.Fatalf("first reply token's logprob: %v generated-only, %v unsteered, %v everywhere", gen1.first, none.first, all.first)
	}
	if one, every := gen([]int{prompt[0]}, only), gen([]int{prompt[0]}, steer); !equalInts(one.ids, every.ids) || math.Abs(one.first-every.first) > 1e-6 {
		t.Fatalf("a one-token prompt: %v / %v", one, every)
	}
	b, err := m.NewBatch(2, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	st, err := b.Join(prompt, []model.Intervention{only}, model.Sampling{Logprobs: true}, 8)
	if err != nil {
		t.Fatal(err)
	}
	ids := []int{st.ID}
	if math.Abs(st.Logprobs.Chosen.Logprob-gen1.first) > 1e-4 {
		t.Fatalf("batch join: first logprob %v, Generate's %v", st.Logprobs.Chosen.Logprob, gen1.first)
	}
	for len(ids) < 8 {
		steps, err := b.Step()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, steps[0].ID)
	}
	if !equalInts(ids, gen1.ids) {
		t.Fatalf("batch %v, Generate %v", ids, gen1.ids)
	}
}
