package torch

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Decoder is a model's weights prepared for fused decode steps: one shim call computes a whole step for one
// new token per row (keel_torch.h, "Fused decode steps"). It holds references to the weights, not copies: a
// weight changed in place (a merged adapter, a training step) is what the next step reads.
type Decoder struct {
	rt *Runtime
	h  uintptr
}

// Activations, norm placements and q/k norms of a DecoderConfig, as the shim numbers them.
const (
	ActSiLU     = 0
	ActGeluTanh = 1
	ActGelu     = 2

	NormsBefore   = 0 // Llama family
	NormsSandwich = 1 // Gemma 2 and 3: before and after
	NormsAfter    = 2 // OLMo 2

	QKNormNone    = 0
	QKNormPerHead = 1
	QKNormFull    = 2
)

// DecoderConfig is the shape and arithmetic of a decoder for NewDecoder.
type DecoderConfig struct {
	Layers, Hidden, Heads, KVHeads, HeadDim, Intermediate, Vocab int
	Act, QKNorm, Norms                                           int
	SlidingWindow                                                int
	Sliding                                                      []bool // per layer
	LocalRope                                                    bool   // sliding layers read the second RoPE table
	RMSEps, NormOffset, EmbedMult, AttnScale, AttnSoftcap        float64
	FinalSoftcap                                                 float64
}

// DecoderWeightsPerLayer is how many weights each layer hands NewDecoder, in the order keel_torch.h lists.
const DecoderWeightsPerLayer = 17

// NewDecoder prepares weights = {embed, norm, lm_head, then DecoderWeightsPerLayer per layer (zero Tensors where
// the architecture has none)} for fused steps. Every weight must be float32 on the CPU and contiguous.
func (r *Runtime) NewDecoder(c DecoderConfig, weights []Tensor) (*Decoder, error) {
	if len(c.Sliding) != c.Layers {
		return nil, fmt.Errorf("fused decoder: %d sliding flags for %d layers", len(c.Sliding), c.Layers)
	}
	sliding := make([]int64, c.Layers)
	for i, s := range c.Sliding {
		sliding[i] = b2i(s)
	}
	cc := cDecoderConfig{Layers: int64(c.Layers), Hidden: int64(c.Hidden), Heads: int64(c.Heads), KVHeads: int64(c.KVHeads),
		HeadDim: int64(c.HeadDim), Intermediate: int64(c.Intermediate), Vocab: int64(c.Vocab), Act: int64(c.Act),
		QKNorm: int64(c.QKNorm), Norms: int64(c.Norms), SlidingWindow: int64(c.SlidingWindow), LocalRope: b2i(c.LocalRope),
		Sliding: unsafe.Pointer(&sliding[0]), RMSEps: c.RMSEps, NormOffset: c.NormOffset, EmbedMult: c.EmbedMult,
		AttnScale: c.AttnScale, AttnSoftcap: c.AttnSoftcap, FinalSoftcap: c.FinalSoftcap}
	hs := handleList(weights)
	d := &Decoder{rt: r}
	err := r.call("decoder_new", r.sym.DecoderNew, ptr(&cc), ptr(&hs[0]), uintptr(len(weights)), ptr(&d.h))
	runtime.KeepAlive(sliding)
	runtime.KeepAlive(&cc)
	runtime.KeepAlive(hs)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Close releases the decoder (not the weights).
func (d *Decoder) Close() {
	if d != nil && d.h != 0 {
		purego.SyscallN(d.rt.sym.DecoderFree, d.h)
		d.h = 0
	}
}

// StepHook is one intervention of a fused step. Kind: 0 capture, 1 add, 2 cap (model.Kind's numbering).
type StepHook struct {
	Layer   int
	Kind    int
	Full    bool
	Vectors [][]float32 // a capture's directions; an add's vector already times its coefficient; a cap's u
	Tau     float64
	Ceiling bool
	Rows    []int // nil: every row
}

// StepHooks are a step's interventions prepared for the shim.
type StepHooks struct {
	rt    *Runtime
	h     uintptr
	Width int // record values per row
}

// NewStepHooks prepares interventions, listed in the order the forward pass meets them (by layer).
func (r *Runtime) NewStepHooks(list []StepHook, hidden int) (*StepHooks, error) {
	desc := make([]int64, 0, 6*len(list)+1)
	param := make([]float64, 0, len(list)+1)
	vecs := make([]float32, 0, hidden+1)
	rows := make([]int64, 0, 1)
	width := 0
	for _, h := range list {
		n := int64(-1)
		if h.Rows != nil {
			n = int64(len(h.Rows))
			for _, r := range h.Rows {
				rows = append(rows, int64(r))
			}
		}
		desc = append(desc, int64(h.Layer), int64(h.Kind), b2i(h.Full), int64(len(h.Vectors)), b2i(h.Ceiling), n)
		param = append(param, h.Tau)
		if !(h.Kind == 0 && h.Full) {
			for _, v := range h.Vectors {
				if len(v) != hidden {
					return nil, fmt.Errorf("fused step: a vector of %d values for hidden size %d", len(v), hidden)
				}
				vecs = append(vecs, v...)
			}
		}
		switch {
		case h.Kind == 0 && h.Full:
			width += hidden
		case h.Kind == 0:
			width += len(h.Vectors)
		case h.Kind == 2:
			width++
		}
	}
	// Never a zero-length buffer: its address is handed over.
	desc, param, vecs, rows = append(desc, 0), append(param, 0), append(vecs, 0), append(rows, 0)
	s := &StepHooks{rt: r, Width: width}
	err := r.call("step_hooks_new", r.sym.StepHooksNew, ptr(&desc[0]), uintptr(len(list)), ptr(&param[0]), ptr(&vecs[0]), ptr(&rows[0]), uintptr(hidden), ptr(&s.h))
	runtime.KeepAlive(desc)
	runtime.KeepAlive(param)
	runtime.KeepAlive(vecs)
	runtime.KeepAlive(rows)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Close releases the prepared interventions.
func (s *StepHooks) Close() {
	if s != nil && s.h != 0 {
		purego.SyscallN(s.rt.sym.StepHooksFree, s.h)
		s.h = 0
	}
}

// DecoderStep is one fused step's arguments and results, in heap memory the shim may read and write.
type DecoderStep struct {
	Args    []int64   // {B, start, ids[B], pad[B], positions[B]}
	Cache   []Tensor  // K0, V0, K1, V1, ...
	Ropes   []Tensor  // cos, sin[, the sliding layers' cos, sin]
	Logits  []float32 // [B, vocab]
	Records []float32 // [B, hooks' Width]
}

// Step runs one fused step; hooks may be nil.
func (d *Decoder) Step(hooks *StepHooks, st *DecoderStep) error {
	cache, ropes := handleList(st.Cache), handleList(st.Ropes)
	var hh, rec uintptr
	if hooks != nil {
		hh = hooks.h
	}
	if len(st.Records) > 0 {
		rec = uintptr(unsafe.Pointer(&st.Records[0]))
	}
	err := d.rt.call("decoder_step", d.rt.sym.DecoderStep, d.h, hh, ptr(&st.Args[0]), ptr(&cache[0]), ptr(&ropes[0]),
		uintptr(unsafe.Pointer(&st.Logits[0])), rec)
	runtime.KeepAlive(st)
	runtime.KeepAlive(cache)
	runtime.KeepAlive(ropes)
	return err
}

func handleList(ts []Tensor) []uintptr {
	hs := make([]uintptr, len(ts)+1) // never empty: its address is handed over
	for i, t := range ts {
		hs[i] = t.h
	}
	return hs
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// cDecoderConfig is keel_torch.h's kt_decoder_config field for field (every field 8 bytes, so the layouts agree
// on every 64-bit platform).
type cDecoderConfig struct {
	Layers, Hidden, Heads, KVHeads, HeadDim, Intermediate, Vocab int64          // L, D, H, KV, head_dim, I, V
	Act, QKNorm, Norms                                           int64          // KT_ACT_*, KT_QKNORM_*, KT_NORMS_*
	SlidingWindow, LocalRope                                     int64          // positions a sliding layer sees (0: none); 1: sliding layers' own RoPE
	Sliding                                                      unsafe.Pointer // *int64 [L]: 1 for a layer that slides
	RMSEps, NormOffset, EmbedMult                                float64
	AttnScale, AttnSoftcap, FinalSoftcap                         float64
}
