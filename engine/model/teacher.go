package model

import (
	"fmt"

	"github.com/keel-lab/keel/engine/torch"
)

// TeacherForced is the result of a forward pass over given sequences.
type TeacherForced struct {
	// Logprobs[b][t] is log p(seq[t+1] | seq[..t]) (len(seq)-1 values per row).
	Logprobs [][]float32
	// Records[b][t] are the interventions' outputs at each position of row b.
	Records [][][]Record
	// Means[b][layer] is the mean residual stream (output of that layer) over row b's span, when spans were given.
	Means [][][]float32
	// Norms[b][layer] is the mean residual norm ||h|| over row b's span (the scale steering strengths refer to).
	Norms [][]float32
}

// TeacherForce runs sequences (left-padded into one batch) through the model with the given interventions.
// spans, when not nil, gives per row the token range [start, end) whose per-layer mean activations to return.
func (m *Model) TeacherForce(seqs [][]int, hooks *Hooks, spans [][2]int) (*TeacherForced, error) {
	B := len(seqs)
	if B == 0 {
		return &TeacherForced{}, nil
	}
	if spans != nil && len(spans) != B {
		return nil, fmt.Errorf("teacher forcing: %d spans for %d sequences", len(spans), B)
	}
	T := 0
	for i, q := range seqs {
		if len(q) == 0 {
			return nil, fmt.Errorf("teacher forcing: sequence %d is empty", i)
		}
		T = max(T, len(q))
	}
	pad := make([]int, B)
	ids := make([][]int, B)
	for b, q := range seqs {
		pad[b] = T - len(q)
		ids[b] = append(make([]int, pad[b]), q...)
	}
	plan, s, err := m.inferenceSetup(hooks)
	if err != nil {
		return nil, err
	}
	defer plan.close()
	defer s.Close()
	pass := Pass{IDs: ids, Pad: pad, plan: plan}
	if spans != nil {
		w := make([]float32, B*T)
		for b, sp := range spans {
			if sp[0] < 0 || sp[1] > len(seqs[b]) || sp[0] >= sp[1] {
				return nil, fmt.Errorf("teacher forcing: span %v of sequence %d (length %d) is empty or out of range", sp, b, len(seqs[b]))
			}
			for t := sp[0]; t < sp[1]; t++ {
				w[b*T+pad[b]+t] = 1 / float32(sp[1]-sp[0])
			}
		}
		pass.SpanWeights = s.To(s.FromData(w, torch.Float32, []int64{int64(B), 1, int64(T)}, m.Opts.Device), m.Opts.DType, m.Opts.Device)
	}
	out := m.forward(s, pass)
	if err := s.Err(); err != nil { // a bad token id, a shape the model refuses: before any result is sliced
		return nil, err
	}
	// log p(next token): gather from log_softmax over positions 0..T-2 of the padded rows.
	next := make([]int64, B*(T-1))
	for b := range ids {
		for t := 0; t+1 < T; t++ {
			next[b*(T-1)+t] = int64(ids[b][t+1])
		}
	}
	res := &TeacherForced{Logprobs: make([][]float32, B), Records: make([][][]Record, B)}
	if T > 1 {
		lp := s.LogSoftmax(s.To(s.Narrow(out.logits, 1, 0, int64(T-1)), torch.Float32, m.Opts.Device), -1)
		idx := s.FromData(next, torch.Int64, []int64{int64(B), int64(T - 1), 1}, m.Opts.Device)
		all := s.Float32s(s.Gather(lp, 2, idx))
		if err := s.Err(); err != nil {
			return nil, err
		}
		for b := range ids {
			res.Logprobs[b] = all[b*(T-1)+pad[b] : (b+1)*(T-1)]
		}
	}
	if out.records != nil {
		for b := range ids {
			res.Records[b] = out.records[b][pad[b]:]
		}
	}
	if out.means.Valid() {
		L, D := len(m.Layers), m.Config.HiddenSize
		flat := s.Float32s(out.means)
		norms := s.Float32s(out.norms)
		if err := s.Err(); err != nil {
			return nil, err
		}
		res.Means = make([][][]float32, B)
		res.Norms = make([][]float32, B)
		for b := range res.Means {
			res.Means[b] = make([][]float32, L)
			res.Norms[b] = norms[b*L : (b+1)*L]
			for l := 0; l < L; l++ {
				res.Means[b][l] = flat[(b*L+l)*D : (b*L+l+1)*D]
			}
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	return res, nil
}

// FinalHidden returns each sequence's last-layer hidden states after the final norm (Hugging Face's
// hidden_states[-1]), one row-major [len(seq)][D] float32 slice per sequence, from one batched no-grad pass.
func (m *Model) FinalHidden(seqs [][]int) ([][]float32, error) {
	T := 0
	for i, q := range seqs {
		if len(q) == 0 {
			return nil, fmt.Errorf("final hidden states: sequence %d is empty", i)
		}
		T = max(T, len(q))
	}
	if T == 0 {
		return nil, nil
	}
	pad := make([]int, len(seqs))
	ids := make([][]int, len(seqs))
	for b, q := range seqs {
		pad[b] = T - len(q)
		ids[b] = append(make([]int, pad[b]), q...)
	}
	plan, s, err := m.inferenceSetup(nil)
	if err != nil {
		return nil, err
	}
	defer plan.close()
	defer s.Close()
	out := m.forward(s, Pass{IDs: ids, Pad: pad, LastOnly: true, Hidden: true, plan: plan})
	flat := s.Float32s(s.To(out.hidden, torch.Float32, m.Opts.Device))
	if err := s.Err(); err != nil {
		return nil, err
	}
	D := m.Config.HiddenSize
	res := make([][]float32, len(seqs))
	for b := range seqs {
		res[b] = flat[(b*T+pad[b])*D : (b+1)*T*D]
	}
	return res, nil
}

// Logits returns the logits at every position of one sequence, row-major [len(seq)][vocab], in float32.
func (m *Model) Logits(seq []int, hooks *Hooks) ([]float32, error) {
	if len(seq) == 0 {
		return nil, fmt.Errorf("logits: empty sequence")
	}
	plan, s, err := m.inferenceSetup(hooks)
	if err != nil {
		return nil, err
	}
	defer plan.close()
	defer s.Close()
	out := m.forward(s, Pass{IDs: [][]int{seq}, plan: plan})
	logits := s.Float32s(out.logits)
	return logits, s.Err()
}

// TrainLogits runs a training forward pass (autograd records it when parameters require gradients) over rows
// of equal length and returns logits [B, T, vocab] in float32.
func (m *Model) TrainLogits(s *torch.Scope, ids [][]int) Tensor {
	out := m.forward(s, Pass{IDs: ids})
	if m.Opts.DType != torch.Float32 {
		return s.To(out.logits, torch.Float32, m.Opts.Device)
	}
	return out.logits
}

// TrainForward is TrainLogits that also returns the final-norm hidden states [B, T, D] (in float32), the features
// of a value head trained with the model.
func (m *Model) TrainForward(s *torch.Scope, ids [][]int) (logits, hidden Tensor) {
	out := m.forward(s, Pass{IDs: ids, Hidden: true})
	logits, hidden = out.logits, out.hidden
	if m.Opts.DType != torch.Float32 {
		logits, hidden = s.To(logits, torch.Float32, m.Opts.Device), s.To(hidden, torch.Float32, m.Opts.Device)
	}
	return logits, hidden
}

// TrainHidden is the final-norm hidden states [B, T, D] (in float32) alone, for a critic network of its own:
// only the last position's logits are computed.
func (m *Model) TrainHidden(s *torch.Scope, ids [][]int) Tensor {
	hidden := m.forward(s, Pass{IDs: ids, Hidden: true, LastOnly: true}).hidden
	if m.Opts.DType != torch.Float32 {
		hidden = s.To(hidden, torch.Float32, m.Opts.Device)
	}
	return hidden
}

// inferenceSetup compiles the hooks' current list and opens a no-grad scope for one forward pass.
func (m *Model) inferenceSetup(hooks *Hooks) (*hookPlan, *torch.Scope, error) {
	list, version := hooks.Snapshot()
	plan, err := m.compileHooks(list, version)
	if err != nil {
		return nil, nil, err
	}
	return plan, m.RT.NewScope().NoGrad(), nil
}
