package model

import (
	"fmt"
	"sync"
	"time"

	"github.com/keel-lab/keel/engine/torch"
)

// A decode step (one new token per row over the KV cache) of a float32 model on the CPU runs as one shim call
// (engine/torch/csrc/keel_step.cpp) instead of the ~20 ops per layer of forward: for small models those ops'
// dispatch, not their arithmetic, was the step's time (stories260K: 546 tokens/s op by op against 2,969 for a
// plain C loop). forward stays the reference, and runs everything else: prefill, training, CUDA, bf16, adapters.

// fusedDecoder is the model's weights prepared for fused steps, made at the first step that can use them.
type fusedDecoder struct {
	once sync.Once
	dec  *torch.Decoder
	err  error // why the model runs op by op (a weight not contiguous, ...)
}

func (f *fusedDecoder) close() {
	if f.dec != nil {
		f.dec.Close()
	}
}

// fusedStepper is the decoder for fused steps, or nil where forward must run the step.
func (m *Model) fusedStepper() *torch.Decoder {
	if m.Opts.Unfused || m.Opts.Device.CUDA || m.Opts.split() || m.Opts.DType != torch.Float32 || m.adapters != nil || m.Training ||
		m.Spec.Act == "gelu_tanh_f16" || !m.LMHead.Valid() {
		return nil
	}
	m.fused.once.Do(func() { m.fused.dec, m.fused.err = m.newFusedDecoder() })
	return m.fused.dec
}

func (m *Model) newFusedDecoder() (*torch.Decoder, error) {
	c, sp := m.Config, m.Spec
	cfg := torch.DecoderConfig{
		Layers: len(m.Layers), Hidden: c.HiddenSize, Heads: c.NumAttentionHeads, KVHeads: c.NumKeyValueHeads,
		HeadDim: c.HeadDim, Intermediate: c.IntermediateSize, Vocab: c.VocabSize,
		SlidingWindow: sp.SlidingWindow, Sliding: sp.Sliding, LocalRope: len(m.ropes) > 1,
		RMSEps: c.RMSNormEps, NormOffset: sp.NormOffset, EmbedMult: m.embedMult, AttnScale: sp.AttnScale,
		AttnSoftcap: sp.AttnSoftcap, FinalSoftcap: sp.FinalSoftcap,
	}
	switch sp.Act {
	case "gelu_tanh":
		cfg.Act = torch.ActGeluTanh
	case "gelu":
		cfg.Act = torch.ActGelu
	default:
		cfg.Act = torch.ActSiLU
	}
	switch {
	case sp.QKNormFull:
		cfg.QKNorm = torch.QKNormFull
	case sp.QKNorm:
		cfg.QKNorm = torch.QKNormPerHead
	}
	switch {
	case sp.PostNormsOnly:
		cfg.Norms = torch.NormsAfter
	case sp.SandwichNorms:
		cfg.Norms = torch.NormsSandwich
	}
	ws := []Tensor{m.Embed, m.Norm, m.LMHead}
	for _, l := range m.Layers {
		ws = append(ws, l.AttnNorm, l.Q, l.K, l.V, l.O, l.QBias, l.KBias, l.VBias, l.OBias, l.QNorm, l.KNorm,
			l.MLPNorm, l.Gate, l.Up, l.Down, l.AttnPostNorm, l.MLPPostNorm)
	}
	return m.RT.NewDecoder(cfg, ws)
}

// stepHooks is a hook plan prepared for fused steps: made at the plan's first fused step.
type stepHooks struct {
	once   sync.Once
	hooks  *torch.StepHooks
	err    error
	yields []*compiledHook // the hooks that record, in the order their values lie in a row's records
}

func (p *hookPlan) stepHooks(m *Model) (*stepHooks, error) {
	p.fused.once.Do(func() {
		var list []torch.StepHook
		for l := range p.byLayer {
			for i := range p.byLayer[l] {
				c := &p.byLayer[l][i]
				h := torch.StepHook{Layer: c.Layer, Kind: int(c.Kind), Full: c.Full, Vectors: c.Vectors, Tau: c.Tau, Ceiling: c.Ceiling, Rows: c.Rows}
				if c.Kind == Add {
					h.Vectors = [][]float32{c.added()}
				}
				if c.yields {
					p.fused.yields = append(p.fused.yields, c)
				}
				list = append(list, h)
			}
		}
		p.fused.hooks, p.fused.err = m.RT.NewStepHooks(list, m.Config.HiddenSize)
	})
	return &p.fused, p.fused.err
}

func (f *stepHooks) close() {
	if f.hooks != nil {
		f.hooks.Close()
	}
}

// fusedForward runs pass p as one fused step when it is one (a single new token per row over a KV cache, no
// span means or hidden states asked) and the model can; ok is false where forward must run it.
func (m *Model) fusedForward(s *torch.Scope, p Pass) (out passOut, ok bool) {
	if p.Cache == nil || len(p.IDs) == 0 || len(p.IDs[0]) != 1 || p.SpanWeights.Valid() || p.Hidden {
		return passOut{}, false
	}
	dec := m.fusedStepper()
	if dec == nil {
		return passOut{}, false
	}
	var hooks *stepHooks
	if p.plan != nil {
		var err error
		if hooks, err = p.plan.stepHooks(m); err != nil {
			s.Fail(err)
			return passOut{}, true
		}
	}
	B, start, V := len(p.IDs), p.Cache.Len, m.Config.VocabSize
	if start+1 > p.Cache.Cap {
		return passOut{}, false // forward says the cache is full
	}
	st := &torch.DecoderStep{Args: make([]int64, 2+3*B), Logits: make([]float32, B*V)}
	st.Args[0], st.Args[1] = int64(B), int64(start)
	maxPos := 0
	for b, row := range p.IDs {
		if len(row) != 1 {
			return passOut{}, false
		}
		if err := m.Config.checkID(row[0]); err != nil {
			s.Fail(err)
			return passOut{}, true
		}
		pad := p.Cache.Pad[b]
		pos := max(start-pad, 0)
		maxPos = max(maxPos, pos)
		st.Args[2+b], st.Args[2+B+b], st.Args[2+2*B+b] = int64(row[0]), int64(pad), int64(pos)
	}
	for _, r := range m.ropes {
		if !m.growRope(s, r, maxPos) {
			return passOut{}, true
		}
		st.Ropes = append(st.Ropes, r.cos, r.sin)
	}
	for i := range p.Cache.K {
		st.Cache = append(st.Cache, p.Cache.K[i], p.Cache.V[i])
	}
	var sh *torch.StepHooks
	if hooks != nil {
		sh = hooks.hooks
		st.Records = make([]float32, B*sh.Width)
	}
	// A failure earlier in the scope (a cache view that could not be made) is the one to report: the step would
	// only meet its empty tensors and say "null tensor handle".
	for _, t := range st.Cache {
		if !t.Valid() {
			if s.Err() == nil {
				s.Fail(fmt.Errorf("the KV cache holds a freed tensor: the generation was closed while it ran"))
			}
			return passOut{}, true
		}
	}
	if err := dec.Step(sh, st); err != nil {
		s.Fail(err)
		return passOut{}, true
	}
	out.hostLogits = st.Logits
	if hooks != nil && len(hooks.yields) > 0 {
		out.records = make([][][]Record, B)
		for b := range out.records {
			recs := make([]Record, len(hooks.yields))
			at := b * sh.Width
			for i, c := range hooks.yields {
				recs[i] = Record{Intervention: c.index, Layer: c.Layer, Kind: c.Kind, Values: st.Records[at : at+c.width : at+c.width]}
				at += c.width
			}
			out.records[b] = [][]Record{recs}
		}
	}
	return out, true
}

// BareStepRate is the decode rate (tokens/s) of the model's step alone, one row, greedy: the prompt prefilled,
// then n steps each fed the argmax of the last, with nothing else per token (no sampler, stop checks, records or
// callbacks). It is the floor `keel bench decode` holds Generate against.
func (m *Model) BareStepRate(prompt []int, n int) (float64, error) {
	cache, err := m.NewCache([]int{0}, len(prompt)+n+1)
	if err != nil {
		return 0, err
	}
	defer cache.Close()
	s := m.RT.NewScope().NoGrad()
	defer s.Close()
	V := m.Config.VocabSize
	next := func(out passOut) int {
		if out.hostLogits != nil {
			return argmax(out.hostLogits[:V])
		}
		return int(s.Int64s(s.Argmax(out.logits, -1, false))[0])
	}
	id := next(m.forward(s, Pass{IDs: [][]int{prompt}, Cache: cache, LastOnly: true}))
	cache.Len = len(prompt)
	var t0 time.Time
	for i := 0; i <= n; i++ {
		if i == 1 { // the first step warms up, as Generate's first token is not timed
			t0 = time.Now()
		}
		id = next(m.forward(s, Pass{IDs: [][]int{{id}}, Cache: cache, LastOnly: true}))
		if err := s.Err(); err != nil {
			return 0, err
		}
		cache.Len++
		s.Release()
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}
