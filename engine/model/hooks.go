package model

import (
	"fmt"
	"math"
	"sync"

	"github.com/keel-lab/keel/engine/torch"
)

// Kind is what an intervention does at its layer's output.
type Kind int

const (
	// Capture records <h, u> for each given unit vector u (or h itself when Full).
	Capture Kind = iota
	// Add steers: h += Coeff * v.
	Add
	// Cap bounds <h, u>: a floor (h -= u * min(<h,u> - Tau, 0)) or, with Ceiling, h -= u * max(<h,u> - Tau, 0).
	Cap
)

func (k Kind) String() string {
	return [...]string{"capture", "add", "cap"}[k]
}

// Intervention is one step at one layer's output (the residual stream after decoder layer Layer, the same site
// as the output of Hugging Face's model.model.layers[Layer]). Interventions of a layer run in order.
type Intervention struct {
	Layer   int         `json:"layer"`
	Kind    Kind        `json:"kind"`              // 0 capture, 1 add, 2 cap
	Vectors [][]float32 `json:"vectors,omitempty"` // Capture: the directions (unit vectors); Add, Cap: one vector
	Full    bool        `json:"full,omitempty"`    // Capture: record the whole residual vector instead
	Coeff   float64     `json:"coeff,omitempty"`   // Add
	Tau     float64     `json:"tau,omitempty"`     // Cap threshold on <h, u>
	Ceiling bool        `json:"ceiling,omitempty"` // Cap: bound from above instead of below
	Label   string      `json:"label,omitempty"`
	// GeneratedOnly restricts an Add or a Cap to the positions that choose generated tokens (the prompt's last
	// and every reply token's): the rest of the prompt goes through untouched (a capture still records it). The
	// default, false, acts at every position, prompt and reply.
	GeneratedOnly bool `json:"generated_only,omitempty"`
	// Rows are the batch rows it acts on (nil: every row): one batch serves requests with interventions of their
	// own. A capture records every row; only Add and Cap change what they touch.
	Rows []int `json:"rows,omitempty"`
}

// inertOnPrompt is the list as it acts on the prompt's positions before the last: each GeneratedOnly Add or Cap
// made inert in its place (a zero coefficient, a bound no projection reaches), so the list's indices and
// records keep their meaning.
func inertOnPrompt(list []Intervention) ([]Intervention, bool) {
	out := list
	changed := false
	for i, iv := range list {
		if !iv.GeneratedOnly || iv.Kind == Capture {
			continue
		}
		if !changed {
			out = append([]Intervention(nil), list...)
			changed = true
		}
		switch iv.Kind {
		case Add:
			out[i].Coeff = 0
		case Cap:
			out[i].Tau = -1e30
			if iv.Ceiling {
				out[i].Tau = 1e30
			}
		}
	}
	return out, changed
}

// Record is what one intervention yields for one token: projections (Capture), the residual vector (Capture
// with Full) or, for Cap, the signed amount the cap moved h along u (0 when the cap was inactive).
type Record struct {
	Intervention int // index into the Hooks' list
	Layer        int
	Kind         Kind
	Values       []float32
}

// Hooks is a thread-safe, versioned list of interventions: the TUI edits it while generation runs, and every
// generation step uses the list as it stands when the step starts.
type Hooks struct {
	mu      sync.Mutex
	list    []Intervention
	version uint64
}

// NewHooks makes a hook list.
func NewHooks(list ...Intervention) *Hooks {
	return &Hooks{list: append([]Intervention(nil), list...), version: 1}
}

// Set replaces the whole list.
func (h *Hooks) Set(list []Intervention) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.list = append([]Intervention(nil), list...)
	h.version++
}

// List returns a copy of the current list.
func (h *Hooks) List() []Intervention {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Intervention(nil), h.list...)
}

// Snapshot is the current list and its version, which every Set changes: a reader that keeps the version knows
// when to read the list again.
func (h *Hooks) Snapshot() ([]Intervention, uint64) {
	if h == nil {
		return nil, 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.list, h.version
}

// added is what an Add intervention adds to h: Coeff * v, in float64 rounded once to float32 (forward and the
// fused step add the same values).
func (iv Intervention) added() []float32 {
	v := make([]float32, len(iv.Vectors[0]))
	for k, x := range iv.Vectors[0] {
		v[k] = float32(float64(x) * iv.Coeff)
	}
	return v
}

// compiledHook is an intervention with its vectors on the device.
type compiledHook struct {
	index int
	Intervention
	dirs   Tensor // Capture: [D, K]; Cap: [D, 1]
	row    Tensor // Cap: [D]; Add: Coeff*v, [D]
	width  int    // values per token it yields
	yields bool
	single int // single-direction captures: index into hookPlan.singles, else -1
}

// hookPlan is a compiled Hooks list, rebuilt when the list's version changes.
type hookPlan struct {
	version uint64
	scope   *torch.Scope
	byLayer [][]compiledHook
	// singles stacks the directions of every single-direction capture, [n, D, 1], in forward order: those
	// captures only keep their h during the pass and are projected together at its end (two ops, not 2n).
	singles Tensor
	fused   stepHooks // the plan as fused steps take it
}

func (p *hookPlan) close() {
	if p != nil && p.scope != nil {
		p.scope.Close()
		p.fused.close()
	}
}

// compile uploads the vectors of list; it validates layers and shapes so a bad vector file fails clearly.
func (m *Model) compileHooks(list []Intervention, version uint64) (*hookPlan, error) {
	p := &hookPlan{version: version, scope: m.RT.NewScope(), byLayer: make([][]compiledHook, len(m.Layers))}
	d := m.Config.HiddenSize
	for i, iv := range list {
		if iv.Layer < 0 || iv.Layer >= len(m.Layers) {
			p.close()
			return nil, fmt.Errorf("intervention %d (%s): layer %d out of range 0..%d", i, iv.Kind, iv.Layer, len(m.Layers)-1)
		}
		for j, v := range iv.Vectors {
			if len(v) != d {
				p.close()
				return nil, fmt.Errorf("intervention %d (%s, layer %d): vector %d has %d values, the model's hidden size is %d", i, iv.Kind, iv.Layer, j, len(v), d)
			}
		}
		for _, r := range iv.Rows {
			if r < 0 {
				p.close()
				return nil, fmt.Errorf("intervention %d (%s, layer %d): row %d: rows count from 0", i, iv.Kind, iv.Layer, r)
			}
		}
		c := compiledHook{index: i, Intervention: iv, single: -1}
		s := p.scope
		upload := func(vs [][]float32) Tensor {
			flat := make([]float32, 0, len(vs)*d)
			for _, v := range vs {
				flat = append(flat, v...)
			}
			return s.To(s.FromData(flat, torch.Float32, []int64{int64(len(vs)), int64(d)}, m.Opts.Device), m.Opts.DType, m.Opts.Device)
		}
		switch iv.Kind {
		case Capture:
			c.yields = true
			if iv.Full {
				c.width = d
			} else {
				if len(iv.Vectors) == 0 {
					p.close()
					return nil, fmt.Errorf("intervention %d (capture, layer %d): no vectors to project on", i, iv.Layer)
				}
				c.width = len(iv.Vectors)
				u := upload(iv.Vectors)
				c.dirs = s.Contiguous(s.Transpose(u, 0, 1))
				if c.width == 1 {
					c.row = s.Reshape(u, int64(d))
				}
			}
		case Add, Cap:
			if len(iv.Vectors) != 1 {
				p.close()
				return nil, fmt.Errorf("intervention %d (%s, layer %d): needs exactly one vector, got %d", i, iv.Kind, iv.Layer, len(iv.Vectors))
			}
			if math.IsNaN(iv.Coeff) || math.IsNaN(iv.Tau) {
				p.close()
				return nil, fmt.Errorf("intervention %d (%s, layer %d): NaN coefficient or threshold", i, iv.Kind, iv.Layer)
			}
			if iv.Kind == Add {
				c.row = s.Reshape(upload([][]float32{iv.added()}), int64(d))
			} else {
				u := upload(iv.Vectors)
				c.row = s.Reshape(u, int64(d))
				c.dirs = s.Reshape(u, int64(d), 1)
				c.yields, c.width = true, 1
			}
		default:
			p.close()
			return nil, fmt.Errorf("intervention %d: unknown kind %d", i, iv.Kind)
		}
		p.byLayer[iv.Layer] = append(p.byLayer[iv.Layer], c)
	}
	// Number the single-direction captures in the order the forward pass meets them.
	var rows []Tensor
	for l := range p.byLayer {
		for i := range p.byLayer[l] {
			c := &p.byLayer[l][i]
			if c.Kind == Capture && !c.Full && c.width == 1 {
				c.single = len(rows)
				rows = append(rows, c.row)
			}
		}
	}
	if len(rows) > 0 {
		p.singles = p.scope.Reshape(p.scope.Stack(rows, 0), int64(len(rows)), int64(d), 1)
	}
	if err := p.scope.Err(); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// yield is one captured tensor awaiting the host copy at the end of a forward pass.
type yield struct {
	hook *compiledHook
	t    Tensor // [B, T, width]; for a single-direction capture, the h to project
}

// apply runs a layer's interventions on h [B, T, D], returning the new h and appending captures.
func (m *Model) applyHooks(s *torch.Scope, hooks []compiledHook, h Tensor, out []yield) (Tensor, []yield) {
	for i := range hooks {
		c := &hooks[i]
		switch c.Kind {
		case Capture:
			switch {
			case c.Full, c.single >= 0: // h itself; single directions are projected together in collect
				out = append(out, yield{c, h})
			default:
				out = append(out, yield{c, s.Matmul(h, c.dirs)})
			}
		case Add:
			if c.Rows == nil {
				h = s.Add(h, c.row)
			} else {
				h = s.Add(h, s.Mul(rowMask(m, s, h, c.Rows), c.row))
			}
		case Cap:
			capped, excess := s.Cap(h, c.dirs, c.row, c.Tau, c.Ceiling)
			if c.Rows != nil {
				// The other rows keep h: capped - h is the cap's move, applied where the mask is 1.
				mask := rowMask(m, s, h, c.Rows)
				capped = s.Add(h, s.Mul(mask, s.Sub(capped, h)))
				excess = s.Mul(mask, excess)
			}
			h = capped
			out = append(out, yield{c, excess}) // negated on the host: h moved by -excess
		}
	}
	return h, out
}

// rowMask is [B, 1, 1] in h's dtype: 1 on the given rows of h's batch, 0 elsewhere.
func rowMask(m *Model, s *torch.Scope, h Tensor, rows []int) Tensor {
	shape := s.Shape(h)
	if len(shape) == 0 {
		return Tensor{}
	}
	mask := make([]float32, shape[0])
	for _, r := range rows {
		if r >= 0 && r < len(mask) {
			mask[r] = 1
		}
	}
	t := s.FromData(mask, torch.Float32, []int64{shape[0], 1, 1}, m.Opts.Device)
	if m.Opts.DType != torch.Float32 {
		t = s.To(t, m.Opts.DType, m.Opts.Device)
	}
	return t
}

// collect copies every capture of a forward pass to the host in one transfer and splits it per row and token:
// result[b][t] lists the records of row b, position t, in the order the interventions ran.
func collect(s *torch.Scope, plan *hookPlan, ys []yield, batch, steps int) [][][]Record {
	if len(ys) == 0 || s.Err() != nil {
		return nil
	}
	var parts, hs []Tensor
	offset := make([]int, len(ys)) // where each yield's values start in the concatenated last dimension
	total := 0
	for i, y := range ys {
		if y.hook.single >= 0 {
			hs = append(hs, y.t)
			continue
		}
		parts = append(parts, y.t)
		offset[i] = total
		total += y.hook.width
	}
	if len(hs) > 0 {
		// [n, B, T, D] -> [n, B*T, D] @ [n, D, 1] -> [B, T, n]
		n, bt := int64(len(hs)), int64(batch*steps)
		stacked := s.Reshape(s.Stack(hs, 0), n, bt, int64(-1))
		proj := s.Permute(s.Reshape(s.Matmul(stacked, plan.singles), n, int64(batch), int64(steps)), 1, 2, 0)
		parts = append(parts, proj)
		for i, y := range ys {
			if y.hook.single >= 0 {
				offset[i] = total + y.hook.single
			}
		}
		total += len(hs)
	}
	all := parts[0]
	if len(parts) > 1 {
		all = s.Cat(parts, 2)
	}
	all = s.To(all, torch.Float32, torch.CPU)
	flat := make([]float32, batch*steps*total)
	s.CopyToHost(all, flat)
	if s.Err() != nil {
		return nil
	}
	for i, y := range ys { // a cap yields its clamped excess; h moved by its negation
		if y.hook.Kind == Cap {
			for k := offset[i]; k < len(flat); k += total {
				flat[k] = -flat[k]
			}
		}
	}
	res := make([][][]Record, batch)
	for b := 0; b < batch; b++ {
		res[b] = make([][]Record, steps)
		for t := 0; t < steps; t++ {
			base := (b*steps + t) * total
			recs := make([]Record, len(ys))
			for i, y := range ys {
				lo, hi := base+offset[i], base+offset[i]+y.hook.width
				recs[i] = Record{Intervention: y.hook.index, Layer: y.hook.Layer, Kind: y.hook.Kind, Values: flat[lo:hi:hi]}
			}
			res[b][t] = recs
		}
	}
	return res
}
