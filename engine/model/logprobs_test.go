package model_test

import (
	"context"
	"math"
	"testing"

	"github.com/keel-lab/keel/engine/model"
)

// logSoftmax is the reference: log-softmax of one position's logits in float64.
func logSoftmax(row []float32) []float64 {
	top := math.Inf(-1)
	for _, v := range row {
		top = math.Max(top, float64(v))
	}
	var sum float64
	for _, v := range row {
		sum += math.Exp(float64(v) - top)
	}
	out := make([]float64, len(row))
	for i, v := range row {
		out[i] = float64(v) - top - math.Log(sum)
	}
	return out
}

// A generated token's logprobs are the log-softmax of the logits it was chosen from: the same numbers as a
// teacher-forced pass over the prompt and the reply computes at each position, under the same interventions and
// with the bias added, to 1e-4; the top list is the most likely tokens in order.
func TestLogprobsAreTheLogSoftmaxOfTheLogitsChosenFrom(t *testing.T) {
	lm := stories(t)
	D := lm.Config.HiddenSize
	hooks := model.NewHooks(model.Intervention{Layer: 2, Kind: model.Cap, Vectors: [][]float32{randomUnit(D, 3)}, Tau: 0.1})
	bias := map[int]float64{5: 2.5, 17: -3}
	prompt := []int{1, 403, 407}
	var steps []model.Step
	cfg := model.GenerateConfig{MaxTokens: 12, Hooks: hooks, Sampling: model.Sampling{Logprobs: true, TopLogprobs: 5, LogitBias: bias},
		OnStep: func(st model.Step) (bool, error) { steps = append(steps, st); return false, nil }}
	res, err := lm.Generate(context.Background(), [][]int{prompt}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	seq := append(append([]int(nil), prompt...), res[0].IDs...)
	logits, err := lm.Logits(seq, hooks)
	if err != nil {
		t.Fatal(err)
	}
	V := lm.Config.VocabSize
	for k, st := range steps {
		pos := len(prompt) - 1 + k
		row := append([]float32(nil), logits[pos*V:(pos+1)*V]...)
		for id, b := range bias {
			row[id] += float32(b)
		}
		ref := logSoftmax(row)
		lp := st.Logprobs
		if lp == nil || lp.Chosen.ID != st.ID || math.Abs(lp.Chosen.Logprob-ref[st.ID]) > 1e-4 {
			t.Fatalf("token %d (%d): %+v, reference %v", k, st.ID, lp, ref[st.ID])
		}
		if len(lp.Top) != 5 || lp.Top[0].ID != st.ID { // greedy: the chosen token is the most likely
			t.Fatalf("token %d: top %+v", k, lp.Top)
		}
		for i, x := range lp.Top {
			if math.Abs(x.Logprob-ref[x.ID]) > 1e-4 || i > 0 && x.Logprob > lp.Top[i-1].Logprob {
				t.Fatalf("token %d: top %+v, reference %v", k, lp.Top, ref[x.ID])
			}
		}
		for id := range ref {
			if ref[id] > lp.Top[4].Logprob+1e-9 && !containsID(lp.Top, id) {
				t.Fatalf("token %d: %d (%v) is more likely than the top list's last", k, id, ref[id])
			}
		}
	}
}

func containsID(xs []model.TokenLogprob, id int) bool {
	for _, x := range xs {
		if x.ID == id {
			return true
		}
	}
	return false
}

// OpenAI's penalties count the reply's own tokens, not the prompt's: a strong frequency penalty never repeats a
// reply token greedily while a prompt token stays free; a -100 bias bans a token, a +100 bias forces it.
func TestPenaltiesAndBias(t *testing.T) {
	lm := stories(t)
	ctx := context.Background()
	plain, err := lm.Generate(ctx, [][]int{{1}}, model.GenerateConfig{MaxTokens: 60})
	if err != nil {
		t.Fatal(err)
	}
	repeats := func(ids []int) bool {
		seen := map[int]bool{}
		for _, id := range ids {
			if seen[id] {
				return true
			}
			seen[id] = true
		}
		return false
	}
	if !repeats(plain[0].IDs) {
		t.Fatal("the plain greedy story repeats no token: the test shows nothing")
	}
	pen, err := lm.Generate(ctx, [][]int{{1}}, model.GenerateConfig{MaxTokens: 60, Sampling: model.Sampling{PresencePenalty: 2, FrequencyPenalty: 2, LogitBias: map[int]float64{}}})
	if err != nil {
		t.Fatal(err)
	}
	if equalInts(pen[0].IDs, plain[0].IDs) {
		t.Fatal("penalties changed nothing")
	}
	first := plain[0].IDs[0]
	banned, _ := lm.Generate(ctx, [][]int{{1}}, model.GenerateConfig{MaxTokens: 20, Sampling: model.Sampling{LogitBias: map[int]float64{first: -100}}})
	for _, id := range banned[0].IDs {
		if id == first {
			t.Fatalf("token %d came despite a -100 bias: %v", first, banned[0].IDs)
		}
	}
	forced, _ := lm.Generate(ctx, [][]int{{1}}, model.GenerateConfig{MaxTokens: 5, Sampling: model.Sampling{LogitBias: map[int]float64{300: 100}}})
	if !equalInts(forced[0].IDs, []int{300, 300, 300, 300, 300}) {
		t.Fatalf("a +100 bias: %v", forced[0].IDs)
	}
	for _, bad := range []model.Sampling{{PresencePenalty: 2.5}, {FrequencyPenalty: math.NaN()}, {LogitBias: map[int]float64{3: 101}}, {TopLogprobs: 21}} {
		if bad.Check() == nil {
			t.Errorf("%+v passed the check", bad)
		}
	}
	if (model.Sampling{LogitBias: map[int]float64{100000: 1}}).CheckVocab(lm.Config.VocabSize) == nil {
		t.Error("a bias on a token past the vocabulary passed")
	}
}
