package model

import (
	"fmt"

	"github.com/keel-lab/keel/engine/torch"
)

// The shared decoder: every architecture runs this code, steered by its Spec.
//
//   x = embed(ids) [* sqrt(d)]
//   for each layer:
//     a = attention(rope(q), rope(k), v) of norm(x)     [q/k head norms: Qwen3; biases: Qwen2]
//     x = x + [post-norm](o(a))                          [post-norm: Gemma2]
//     x = x + [post-norm](down(act(gate(norm(x))) * up(norm(x))))
//     x = interventions(x)                               <- the hook site: output of layer i
//   logits = lm_head(norm(x)) [soft-capped: Gemma2]

// Cache holds keys and values of earlier positions for a batch: per layer [B, kv_heads, capacity, head_dim].
type Cache struct {
	K, V  []Tensor
	Len   int   // positions filled so far (the same for every row; left padding evens out lengths)
	Cap   int   // capacity in positions
	Pad   []int // leading padding positions of each row
	scope *torch.Scope
}

// NewCache allocates a cache for len(pad) rows and capacity positions.
func (m *Model) NewCache(pad []int, capacity int) (*Cache, error) {
	c := &Cache{Cap: capacity, Pad: append([]int(nil), pad...), scope: m.RT.NewScope()}
	shape := []int64{int64(len(pad)), int64(m.Config.NumKeyValueHeads), int64(capacity), int64(m.Config.HeadDim)}
	for i := range m.Layers {
		dev := m.Opts.layerDevice(i)
		c.K = append(c.K, c.scope.Zeros(shape, m.Opts.DType, dev))
		c.V = append(c.V, c.scope.Zeros(shape, m.Opts.DType, dev))
	}
	if err := c.scope.Err(); err != nil {
		c.scope.Close()
		return nil, fmt.Errorf("allocate KV cache (%d rows x %d positions): %w", len(pad), capacity, err)
	}
	return c, nil
}

// Reset empties the cache for reuse with the same rows.
func (c *Cache) Reset() { c.Len = 0 }

// Close frees the cache.
func (c *Cache) Close() { c.scope.Close() }

// Pass is one forward call.
type Pass struct {
	IDs      [][]int // [B][T]; every row the same length
	Cache    *Cache  // nil: attend over IDs alone, from position 0
	Pad      []int   // left padding per row when Cache is nil
	LastOnly bool    // logits for the last position only
	// SpanWeights [B, 1, T] (optional): each layer's output is also reduced to SpanWeights @ x, e.g. a mean over
	// each row's response tokens, returned as Means [B, layers, D], and the tokens' residual norms to
	// SpanWeights @ ||x||, returned as Norms [B, layers].
	SpanWeights Tensor
	Hidden      bool // also return the final-norm hidden states [B, T, D] (the features a value head reads)
	plan        *hookPlan
}

// passOut is what a forward pass yields.
type passOut struct {
	logits  Tensor       // [B, T or 1, vocab]
	records [][][]Record // records[b][t]
	means   Tensor       // [B, layers, D] when SpanWeights was given
	norms   Tensor       // [B, layers, 1] when SpanWeights was given
	hidden  Tensor       // [B, T, D] final-norm states when Hidden was asked for
	// hostLogits replaces logits after a fused step: [B * vocab] on the host.
	hostLogits []float32
}

// forward runs the model.
func (m *Model) forward(s *torch.Scope, p Pass) passOut {
	if out, ok := m.fusedForward(s, p); ok {
		return out
	}
	c := m.Config
	B, T := len(p.IDs), len(p.IDs[0])
	start, pad := 0, p.Pad
	if p.Cache != nil {
		start, pad = p.Cache.Len, p.Cache.Pad
		if start+T > p.Cache.Cap {
			s.Fail(fmt.Errorf("KV cache full: %d positions + %d new > capacity %d", start, T, p.Cache.Cap))
			return passOut{}
		}
	}
	if pad == nil {
		pad = make([]int, B)
	}
	flat := make([]int64, 0, B*T)
	pos := make([]int64, 0, B*T)
	maxPos := 0
	for b, row := range p.IDs {
		if len(row) != T {
			s.Fail(fmt.Errorf("forward: row %d has %d tokens, row 0 has %d", b, len(row), T))
			return passOut{}
		}
		for j, id := range row {
			if err := c.checkID(id); err != nil {
				s.Fail(err)
				return passOut{}
			}
			flat = append(flat, int64(id))
			q := max(start+j-pad[b], 0)
			maxPos = max(maxPos, q)
			pos = append(pos, int64(q))
		}
	}
	dev := m.Opts.Device
	ids := s.FromData(flat, torch.Int64, []int64{int64(B), int64(T)}, dev)
	// cos/sin per RoPE: the sliding layers' own table, where there is one, is built when a layer first needs it.
	ropeCos, ropeSin := make([]Tensor, len(m.ropes)), make([]Tensor, len(m.ropes))
	ropeFor := func(layer int) (Tensor, Tensor) {
		k := 0
		if len(m.ropes) > 1 && m.Spec.Sliding[layer] {
			k = 1
		}
		if !ropeCos[k].Valid() {
			ropeCos[k], ropeSin[k] = m.rope(s, m.ropes[k], pos, maxPos, B, T)
		}
		return ropeCos[k], ropeSin[k]
	}
	masks := newMasks(m, s, pad, start, T)
	// On a split model the residual stream moves to each layer's device, and back to Device for a layer's
	// interventions and span means, which run there; the per-pass tables travel with it, each copied once.
	xDev := dev
	type onDev struct {
		t   Tensor
		dev torch.Device
	}
	copies := map[onDev]Tensor{}
	onDevice := func(t Tensor, to torch.Device) Tensor {
		if to == dev || !t.Valid() {
			return t
		}
		k := onDev{t, to}
		if _, ok := copies[k]; !ok {
			copies[k] = s.To(t, s.DType(t), to)
		}
		return copies[k]
	}

	x := s.Embedding(m.Embed, ids)
	if m.embedMult != 0 {
		x = s.MulScalar(x, m.embedMult)
	}
	H, KV, hd := int64(c.NumAttentionHeads), int64(c.NumKeyValueHeads), int64(c.HeadDim)
	var ys []yield
	var means, norms []Tensor
	for i := range m.Layers {
		l := &m.Layers[i]
		mark, yielded := s.Mark(), len(ys)
		if ld := m.Opts.layerDevice(i); ld != xDev {
			x, xDev = s.To(x, m.Opts.DType, ld), ld
		}
		h := x
		if !m.Spec.PostNormsOnly {
			h = m.rmsNorm(s, x, l.AttnNorm)
		}
		q, k := m.proj(s, i, "q", h, l.Q, l.QBias), m.proj(s, i, "k", h, l.K, l.KBias)
		if m.Spec.QKNormFull {
			q, k = m.rmsNorm(s, q, l.QNorm), m.rmsNorm(s, k, l.KNorm)
		}
		q = s.Reshape(q, int64(B), int64(T), H, hd)
		k = s.Reshape(k, int64(B), int64(T), KV, hd)
		v := s.Reshape(m.proj(s, i, "v", h, l.V, l.VBias), int64(B), int64(T), KV, hd)
		if m.Spec.QKNorm {
			q = m.rmsNorm(s, q, l.QNorm)
			k = m.rmsNorm(s, k, l.KNorm)
		}
		cos, sin := ropeFor(i)
		cos, sin = onDevice(cos, xDev), onDevice(sin, xDev)
		q = applyRope(s, s.Transpose(q, 1, 2), cos, sin)
		k = applyRope(s, s.Transpose(k, 1, 2), cos, sin)
		v = s.Transpose(v, 1, 2)
		if p.Cache != nil {
			s.CopyInto(s.Narrow(p.Cache.K[i], 2, int64(start), int64(T)), k)
			s.CopyInto(s.Narrow(p.Cache.V[i], 2, int64(start), int64(T)), v)
			k = s.Narrow(p.Cache.K[i], 2, 0, int64(start+T))
			v = s.Narrow(p.Cache.V[i], 2, 0, int64(start+T))
		}
		mask, causal := masks.get(m.Spec.Sliding[i])
		mask = onDevice(mask, xDev)
		a := s.Attention(q, k, v, mask, causal, m.Spec.AttnScale, m.Spec.AttnSoftcap)
		o := m.proj(s, i, "o", s.Reshape(s.Transpose(a, 1, 2), int64(B), int64(T), H*hd), l.O, l.OBias)
		if m.Spec.SandwichNorms || m.Spec.PostNormsOnly {
			o = m.rmsNorm(s, o, l.AttnPostNorm)
		}
		x = s.Add(x, o)
		h = x
		if !m.Spec.PostNormsOnly {
			h = m.rmsNorm(s, x, l.MLPNorm)
		}
		mlp := m.proj(s, i, "down", s.Mul(m.act(s, m.proj(s, i, "gate", h, l.Gate, Tensor{}), xDev), m.proj(s, i, "up", h, l.Up, Tensor{})), l.Down, Tensor{})
		if m.Spec.SandwichNorms || m.Spec.PostNormsOnly {
			mlp = m.rmsNorm(s, mlp, l.MLPPostNorm)
		}
		x = s.Add(x, mlp)
		if (p.plan != nil && len(p.plan.byLayer[i]) > 0 || p.SpanWeights.Valid()) && xDev != dev {
			x, xDev = s.To(x, m.Opts.DType, dev), dev
		}
		if p.plan != nil && len(p.plan.byLayer[i]) > 0 {
			x, ys = m.applyHooks(s, p.plan.byLayer[i], x, ys)
		}
		if p.SpanWeights.Valid() {
			means = append(means, s.Matmul(p.SpanWeights, x))
			norms = append(norms, s.Matmul(p.SpanWeights, s.Norm(x, -1, true)))
		}
		// The layer's intermediates go now: what later code reads is the residual stream, this layer's
		// captures and span means, and the masks (built lazily in the first layer that needs them).
		keep := []Tensor{x, masks.built[0], masks.built[1]}
		keep = append(keep, ropeCos...)
		keep = append(keep, ropeSin...)
		for _, c := range copies {
			keep = append(keep, c)
		}
		for _, y := range ys[yielded:] {
			keep = append(keep, y.t)
		}
		if len(means) > 0 {
			keep = append(keep, means[len(means)-1], norms[len(norms)-1])
		}
		s.ReleaseSince(mark, keep...)
	}
	head := m.Opts.headDevice()
	if head != xDev {
		x = s.To(x, m.Opts.DType, head)
	}
	toDevice := func(t Tensor) Tensor {
		if head == dev {
			return t
		}
		return s.To(t, s.DType(t), dev)
	}
	var hidden Tensor
	if p.Hidden {
		hidden = toDevice(m.rmsNorm(s, x, m.Norm))
	}
	if p.LastOnly && T > 1 {
		x = s.Narrow(x, 1, int64(T-1), 1)
	}
	logits := s.Linear(m.rmsNorm(s, x, m.Norm), m.LMHead, Tensor{})
	if m.Spec.FinalSoftcap > 0 {
		logits = s.MulScalar(s.Tanh(s.DivScalar(logits, m.Spec.FinalSoftcap)), m.Spec.FinalSoftcap)
	}
	logits = toDevice(logits)
	out := passOut{logits: logits, records: collect(s, p.plan, ys, B, T)}
	out.hidden = hidden
	if len(means) > 0 {
		out.means = s.Cat(means, 1)
		out.norms = s.Cat(norms, 1)
	}
	return out
}

// rmsNorm is Hugging Face's RMSNorm: computed in float32, scaled by w (Llama family) or (1 + w) (Gemma).
func (m *Model) rmsNorm(s *torch.Scope, x, w Tensor) Tensor {
	return s.RMSNorm(x, w, m.Config.RMSNormEps, m.Spec.NormOffset)
}

func (m *Model) act(s *torch.Scope, x Tensor, dev torch.Device) Tensor {
	switch m.Spec.Act {
	case "gelu_tanh":
		return s.GeluTanh(x)
	case "gelu_tanh_f16":
		// ggml's CPU GELU reads a table indexed by the input rounded to f16 and holding f16 outputs.
		dt := m.Opts.DType
		y := s.GeluTanh(s.To(s.To(x, torch.Float16, dev), dt, dev))
		return s.To(s.To(y, torch.Float16, dev), dt, dev)
	case "gelu":
		return s.Gelu(x)
	}
	return s.Silu(x)
}

// checkID refuses a token id outside the vocabulary.
func (c *Config) checkID(id int) error {
	if id < 0 || id >= c.VocabSize {
		return fmt.Errorf("forward: token id %d outside the vocabulary (0..%d)", id, c.VocabSize-1)
	}
	return nil
}

// rope returns cos and sin of table r for the given positions, [B, 1, T, head_dim], growing the table when needed.
func (m *Model) rope(s *torch.Scope, r *ropeTable, pos []int64, maxPos, B, T int) (Tensor, Tensor) {
	if !m.growRope(s, r, maxPos) {
		return Tensor{}, Tensor{}
	}
	idx := s.FromData(pos, torch.Int64, []int64{int64(len(pos))}, m.Opts.Device)
	hd := int64(m.Config.HeadDim)
	cos := s.Reshape(s.IndexSelect(r.cos, 0, idx), int64(B), 1, int64(T), hd)
	sin := s.Reshape(s.IndexSelect(r.sin, 0, idx), int64(B), 1, int64(T), hd)
	return cos, sin
}

// growRope makes table r cover position maxPos (doubling it); false when that failed (the error is in s).
func (m *Model) growRope(s *torch.Scope, r *ropeTable, maxPos int) bool {
	if maxPos >= r.n {
		n := max(2*r.n, 512)
		for n <= maxPos {
			n *= 2
		}
		cos, sin := ropeTables(r.inv, n)
		shape := []int64{int64(n), int64(m.Config.HeadDim)}
		dev, dt := m.Opts.Device, m.Opts.DType
		ws := m.weights
		if r.cos.Valid() {
			ws.Free(r.cos)
			ws.Free(r.sin)
		}
		r.cos = ws.To(ws.FromData(cos, torch.Float32, shape, dev), dt, dev)
		r.sin = ws.To(ws.FromData(sin, torch.Float32, shape, dev), dt, dev)
		if err := ws.Err(); err != nil {
			s.Fail(err)
			return false
		}
		r.n = n
	}
	return true
}

// applyRope rotates x [B, heads, T, hd]: x*cos + rotate_half(x)*sin with rotate_half(x) = (-x2, x1).
func applyRope(s *torch.Scope, x, cos, sin Tensor) Tensor { return s.Rope(x, cos, sin) }

// masks builds the attention masks a pass needs, at most one for full and one for sliding layers.
type masks struct {
	m        *Model
	s        *torch.Scope
	pad      []int
	start, T int
	built    [2]Tensor
	done     [2]bool
}

func newMasks(m *Model, s *torch.Scope, pad []int, start, T int) *masks {
	return &masks{m: m, s: s, pad: pad, start: start, T: T}
}

// get returns (mask, causal): no mask and causal=false when every key may be seen (one new token, no padding,
// no window in effect); causal=true alone when only causality constrains; otherwise an explicit bool mask, with
// causal=true beside it when more than one query is asked (the mask already holds causality; the flag lets the
// attention op work over blocks of queries instead of holding all [B, H, T, S] scores).
func (k *masks) get(sliding bool) (Tensor, bool) {
	S := k.start + k.T
	window := k.m.Spec.SlidingWindow
	windowBites := sliding && window > 0 && S > window
	padded := false
	for _, p := range k.pad {
		padded = padded || p > 0
	}
	if !padded && !windowBites {
		return Tensor{}, k.T > 1
	}
	i := 0
	if windowBites {
		i = 1
	}
	if k.done[i] {
		return k.built[i], k.T > 1
	}
	B := len(k.pad)
	allowed := make([]bool, B*k.T*S)
	for b := 0; b < B; b++ {
		for t := 0; t < k.T; t++ {
			qi := k.start + t
			row := allowed[(b*k.T+t)*S:]
			for j := 0; j < S; j++ {
				ok := j >= k.pad[b] && j <= qi
				if windowBites && qi-j >= window {
					ok = false
				}
				row[j] = ok || j == qi // a padding query attends to itself, so softmax stays finite
			}
		}
	}
	k.built[i] = k.s.FromData(allowed, torch.Bool, []int64{int64(B), 1, int64(k.T), int64(S)}, k.m.Opts.Device)
	k.done[i] = true
	return k.built[i], k.T > 1
}
