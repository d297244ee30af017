package model

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/torch"
)

// Scores runs a classifier (a *ForSequenceClassification reward or value model) over token sequences and returns
// each one's score-head outputs [labels] at its last token, transformers' pooling (the last non-padding token:
// keel pads on the left, so every row's last position). Rows go through in batches of up to batch.
func (m *Model) Scores(seqs [][]int, batch int) ([][]float32, error) {
	if !m.Score.Valid() {
		return nil, fmt.Errorf("%s is not a sequence classifier: a reward model is a *ForSequenceClassification checkpoint with a score head", m.Config.Architecture())
	}
	batch = max(batch, 1)
	labels := m.Config.Labels()
	out := make([][]float32, 0, len(seqs))
	for start := 0; start < len(seqs); start += batch {
		rows := seqs[start:min(start+batch, len(seqs))]
		for i, r := range rows {
			if len(r) == 0 {
				return nil, fmt.Errorf("scores: sequence %d is empty", start+i)
			}
		}
		s := m.RT.NewScope().NoGrad()
		flat := s.Float32s(s.To(m.TrainScores(s, rows), torch.Float32, torch.CPU))
		err := s.Err()
		s.Close()
		if err != nil {
			return nil, fmt.Errorf("scores: %w", err)
		}
		for i := range rows {
			out = append(out, flat[i*labels:(i+1)*labels])
		}
	}
	return out, nil
}

// TrainScores is the classifier's outputs [B, labels] for sequences of any lengths (left-padded together), in a
// scope autograd may record: a reward model's training step reads them.
func (m *Model) TrainScores(s *torch.Scope, seqs [][]int) Tensor {
	T := 0
	for _, r := range seqs {
		T = max(T, len(r))
	}
	ids := make([][]int, len(seqs))
	pad := make([]int, len(seqs))
	for i, r := range seqs {
		pad[i] = T - len(r)
		ids[i] = append(make([]int, pad[i]), r...)
	}
	o := m.forward(s, Pass{IDs: ids, Pad: pad, LastOnly: true, Hidden: true})
	last := s.Reshape(s.Narrow(o.hidden, 1, int64(T-1), 1), int64(len(seqs)), int64(m.HiddenSize()))
	out := s.Linear(last, m.Score, Tensor{})
	if m.Opts.DType != torch.Float32 {
		out = s.To(out, torch.Float32, m.Opts.Device)
	}
	return out
}

// MakeClassifier turns a causal LM into a reward model of the same decoder: a score head of labels outputs
// (drawn N(0, 0.02^2) from seed, transformers' initializer_range) in place of lm_head, and the config of the
// architecture's *ForSequenceClassification. A model that is a classifier already is left as it is.
func (m *Model) MakeClassifier(labels int, seed uint64) error {
	if m.Score.Valid() {
		return nil
	}
	base, ok := strings.CutSuffix(m.Config.Architecture(), "ForCausalLM")
	if !ok || labels < 1 {
		return fmt.Errorf("%s: a reward model is made from a *ForCausalLM model with at least one label", m.Config.Architecture())
	}
	if err := m.RT.ManualSeed(seed); err != nil {
		return err
	}
	w := m.weights
	score := w.MulScalar(w.Randn([]int64{int64(labels), int64(m.HiddenSize())}, torch.Float32, m.Opts.Device), 0.02)
	if m.Opts.DType != torch.Float32 {
		score = w.To(score, m.Opts.DType, m.Opts.Device)
	}
	if err := w.Err(); err != nil {
		return err
	}
	cfg := *m.Config
	cfg.Architectures = []string{base + classifierSuffix}
	cfg.ID2Label = map[string]string{}
	for i := 0; i < labels; i++ {
		cfg.ID2Label[strconv.Itoa(i)] = "LABEL_" + strconv.Itoa(i)
	}
	cfg.NumLabels = 0
	m.Config = &cfg
	names := m.Names[:0:0]
	for _, n := range m.Names {
		if n.Name != "lm_head.weight" {
			names = append(names, n)
		}
	}
	m.Names = append(names, NamedTensor{Name: "score.weight", Tensor: score})
	m.Score = score
	m.LMHead = m.Embed
	return nil
}
