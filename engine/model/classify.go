package model

import (
	"fmt"

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
		T := 0
		for i, r := range rows {
			if len(r) == 0 {
				return nil, fmt.Errorf("scores: sequence %d is empty", start+i)
			}
			T = max(T, len(r))
		}
		ids := make([][]int, len(rows))
		pad := make([]int, len(rows))
		for i, r := range rows {
			pad[i] = T - len(r)
			ids[i] = append(make([]int, pad[i]), r...)
		}
		s := m.RT.NewScope().NoGrad()
		o := m.forward(s, Pass{IDs: ids, Pad: pad, LastOnly: true, Hidden: true})
		last := s.Narrow(o.hidden, 1, int64(T-1), 1)
		scores := s.To(s.Linear(last, m.Score, Tensor{}), torch.Float32, torch.CPU)
		flat := s.Float32s(scores)
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
