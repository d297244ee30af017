package model_test

import (
	"math"
	"sort"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// A *ForSequenceClassification model of every architecture scores each sequence with its score head on the
// final-norm hidden state of the sequence's last token: computed by hand from the unbatched hidden states, equal
// for rows of different lengths batched together (left padding), and the same after a save and reload.
func TestRewardModelScoresByHand(t *testing.T) {
	rt := torchtest.Runtime(t)
	configs := model.TinyConfigs()
	names := make([]string, 0, len(configs))
	for n := range configs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			cfg := configs[name]
			cfg.Architectures = []string{strings.TrimSuffix(cfg.Architecture(), "ForCausalLM") + "ForSequenceClassification"}
			cfg.ID2Label = map[string]string{"0": "LABEL_0"}
			m, err := model.NewRandom(rt, cfg, model.Options{}, 5)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if !m.Score.Valid() || cfg.Labels() != 1 {
				t.Fatalf("no score head of one label")
			}
			seqs := [][]int{testPrompt(9, cfg.VocabSize, 1), testPrompt(23, cfg.VocabSize, 2), testPrompt(4, cfg.VocabSize, 3)}
			got, err := m.Scores(seqs, 8)
			if err != nil {
				t.Fatal(err)
			}
			s := rt.NewScope().NoGrad()
			defer s.Close()
			w := s.Float32s(m.Score)
			for i, seq := range seqs {
				_, hidden := m.TrainForward(s, [][]int{seq})
				h := s.Float32s(hidden)
				last := h[(len(seq)-1)*cfg.HiddenSize:]
				want := 0.0
				for j, x := range last {
					want += float64(x) * float64(w[j])
				}
				if math.Abs(want-float64(got[i][0])) > 1e-4*math.Max(1, math.Abs(want)) {
					t.Fatalf("sequence %d: score %v, by hand %v", i, got[i][0], want)
				}
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := m.Save(dir, torch.Float32); err != nil {
				t.Fatal(err)
			}
			c2, err := model.ReadConfig(dir)
			if err != nil {
				t.Fatal(err)
			}
			m2, err := model.LoadWeights(rt, dir, c2, model.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m2.Close()
			again, err := m2.Scores(seqs, 8)
			if err != nil {
				t.Fatal(err)
			}
			for i := range seqs {
				if again[i][0] != got[i][0] {
					t.Fatalf("reloaded score %v != %v", again[i][0], got[i][0])
				}
			}
		})
	}
}

// A causal LM is not a reward model: Scores says so in one line.
func TestScoresNeedAClassifier(t *testing.T) {
	rt := torchtest.Runtime(t)
	m, err := model.NewRandom(rt, model.TinyConfigs()["llama"], model.Options{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Scores([][]int{{1, 2}}, 1); err == nil || !strings.Contains(err.Error(), "ForSequenceClassification") {
		t.Fatalf("got %v", err)
	}
}
