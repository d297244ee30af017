package torch

import "fmt"

// Op codes shared with keel_torch.h.
const (
	opAdd = iota
	opSub
	opMul
	opDiv
	opMatmul
	opMaximum
	opMinimum
	opPow
	opEq
	opLt
	opGt
)

const (
	uNeg = iota
	uExp
	uLog
	uSqrt
	uRsqrt
	uTanh
	uSilu
	uGeluTanh
	uGelu
	uSigmoid
	uRelu
	uAbs
	uSquare
	uSin
	uCos
	uContiguous
	uDetach
	uLogicalNot
)

const (
	sAdd = iota
	sMul
	sPow
	sClampMin
	sClampMax
	sRsub
	sDiv
)

const (
	rSum = iota
	rMean
	rMax
	rMin
	rLogsumexp
	rArgmax
	rNorm
)

// AllDims makes a reduction reduce every dimension.
const AllDims = -1000

func (s *Scope) binary(name string, op int64, a, b Tensor) Tensor {
	if !s.ok(name, a, b) {
		return Tensor{}
	}
	return s.op(name, s.rt.sym.Binary, uintptr(op), a.h, b.h, s.outp())
}

func (s *Scope) unary(name string, op int64, a Tensor) Tensor {
	if !s.ok(name, a) {
		return Tensor{}
	}
	return s.op(name, s.rt.sym.Unary, uintptr(op), a.h, s.outp())
}

func (s *Scope) scalar(name string, op int64, a Tensor, v float64) Tensor {
	if !s.ok(name, a) {
		return Tensor{}
	}
	s.f64[0] = v
	return s.op(name, s.rt.sym.Scalar, uintptr(op), a.h, ptr(&s.f64[0]), s.outp())
}

func (s *Scope) reduce(name string, op int64, a Tensor, dim int, keep bool) Tensor {
	if !s.ok(name, a) {
		return Tensor{}
	}
	k := int64(0)
	if keep {
		k = 1
	}
	return s.op(name, s.rt.sym.Reduce, uintptr(op), a.h, uintptr(int64(dim)), uintptr(k), s.outp())
}

func (s *Scope) Add(a, b Tensor) Tensor     { return s.binary("add", opAdd, a, b) }
func (s *Scope) Sub(a, b Tensor) Tensor     { return s.binary("sub", opSub, a, b) }
func (s *Scope) Mul(a, b Tensor) Tensor     { return s.binary("mul", opMul, a, b) }
func (s *Scope) Div(a, b Tensor) Tensor     { return s.binary("div", opDiv, a, b) }
func (s *Scope) Matmul(a, b Tensor) Tensor  { return s.binary("matmul", opMatmul, a, b) }
func (s *Scope) Maximum(a, b Tensor) Tensor { return s.binary("maximum", opMaximum, a, b) }
func (s *Scope) Minimum(a, b Tensor) Tensor { return s.binary("minimum", opMinimum, a, b) }
func (s *Scope) Pow(a, b Tensor) Tensor     { return s.binary("pow", opPow, a, b) }
func (s *Scope) Eq(a, b Tensor) Tensor      { return s.binary("eq", opEq, a, b) }
func (s *Scope) Lt(a, b Tensor) Tensor      { return s.binary("lt", opLt, a, b) }
func (s *Scope) Gt(a, b Tensor) Tensor      { return s.binary("gt", opGt, a, b) }

func (s *Scope) Neg(a Tensor) Tensor        { return s.unary("neg", uNeg, a) }
func (s *Scope) Exp(a Tensor) Tensor        { return s.unary("exp", uExp, a) }
func (s *Scope) Log(a Tensor) Tensor        { return s.unary("log", uLog, a) }
func (s *Scope) Sqrt(a Tensor) Tensor       { return s.unary("sqrt", uSqrt, a) }
func (s *Scope) Rsqrt(a Tensor) Tensor      { return s.unary("rsqrt", uRsqrt, a) }
func (s *Scope) Tanh(a Tensor) Tensor       { return s.unary("tanh", uTanh, a) }
func (s *Scope) Silu(a Tensor) Tensor       { return s.unary("silu", uSilu, a) }
func (s *Scope) GeluTanh(a Tensor) Tensor   { return s.unary("gelu_tanh", uGeluTanh, a) }
func (s *Scope) Gelu(a Tensor) Tensor       { return s.unary("gelu", uGelu, a) }
func (s *Scope) Sigmoid(a Tensor) Tensor    { return s.unary("sigmoid", uSigmoid, a) }
func (s *Scope) Relu(a Tensor) Tensor       { return s.unary("relu", uRelu, a) }
func (s *Scope) Abs(a Tensor) Tensor        { return s.unary("abs", uAbs, a) }
func (s *Scope) Square(a Tensor) Tensor     { return s.unary("square", uSquare, a) }
func (s *Scope) Sin(a Tensor) Tensor        { return s.unary("sin", uSin, a) }
func (s *Scope) Cos(a Tensor) Tensor        { return s.unary("cos", uCos, a) }
func (s *Scope) Contiguous(a Tensor) Tensor { return s.unary("contiguous", uContiguous, a) }
func (s *Scope) Detach(a Tensor) Tensor     { return s.unary("detach", uDetach, a) }
func (s *Scope) LogicalNot(a Tensor) Tensor { return s.unary("logical_not", uLogicalNot, a) }

func (s *Scope) AddScalar(a Tensor, v float64) Tensor { return s.scalar("add_scalar", sAdd, a, v) }
func (s *Scope) MulScalar(a Tensor, v float64) Tensor { return s.scalar("mul_scalar", sMul, a, v) }
func (s *Scope) DivScalar(a Tensor, v float64) Tensor { return s.scalar("div_scalar", sDiv, a, v) }
func (s *Scope) PowScalar(a Tensor, v float64) Tensor { return s.scalar("pow_scalar", sPow, a, v) }
func (s *Scope) ClampMin(a Tensor, v float64) Tensor  { return s.scalar("clamp_min", sClampMin, a, v) }
func (s *Scope) ClampMax(a Tensor, v float64) Tensor  { return s.scalar("clamp_max", sClampMax, a, v) }

// RSub is v - a.
func (s *Scope) RSub(v float64, a Tensor) Tensor { return s.scalar("rsub", sRsub, a, v) }

func (s *Scope) Sum(a Tensor, dim int, keep bool) Tensor { return s.reduce("sum", rSum, a, dim, keep) }
func (s *Scope) Mean(a Tensor, dim int, keep bool) Tensor {
	return s.reduce("mean", rMean, a, dim, keep)
}
func (s *Scope) Max(a Tensor, dim int, keep bool) Tensor { return s.reduce("max", rMax, a, dim, keep) }
func (s *Scope) Min(a Tensor, dim int, keep bool) Tensor { return s.reduce("min", rMin, a, dim, keep) }
func (s *Scope) Norm(a Tensor, dim int, keep bool) Tensor {
	return s.reduce("norm", rNorm, a, dim, keep)
}
func (s *Scope) LogSumExp(a Tensor, dim int, keep bool) Tensor {
	return s.reduce("logsumexp", rLogsumexp, a, dim, keep)
}
func (s *Scope) Argmax(a Tensor, dim int, keep bool) Tensor {
	return s.reduce("argmax", rArgmax, a, dim, keep)
}

// Linear is x @ w^T (+ b); b may be the zero Tensor.
func (s *Scope) Linear(x, w, b Tensor) Tensor {
	if !s.ok("linear", x, w) {
		return Tensor{}
	}
	return s.op("linear", s.rt.sym.Linear, x.h, w.h, b.h, s.outp())
}

// Where picks a where cond is true, else b.
func (s *Scope) Where(cond, a, b Tensor) Tensor {
	if !s.ok("where", cond, a, b) {
		return Tensor{}
	}
	return s.op("where", s.rt.sym.Where, cond.h, a.h, b.h, s.outp())
}

// MaskedFill sets a to v where mask is true.
func (s *Scope) MaskedFill(a, mask Tensor, v float64) Tensor {
	if !s.ok("masked_fill", a, mask) {
		return Tensor{}
	}
	s.f64[0] = v
	return s.op("masked_fill", s.rt.sym.MaskedFill, a.h, mask.h, ptr(&s.f64[0]), s.outp())
}

// Embedding looks up rows of weight by integer ids.
func (s *Scope) Embedding(weight, ids Tensor) Tensor {
	if !s.ok("embedding", weight, ids) {
		return Tensor{}
	}
	return s.op("embedding", s.rt.sym.Embedding, weight.h, ids.h, s.outp())
}

func (s *Scope) IndexSelect(a Tensor, dim int, idx Tensor) Tensor {
	if !s.ok("index_select", a, idx) {
		return Tensor{}
	}
	return s.op("index_select", s.rt.sym.IndexSelect, a.h, uintptr(int64(dim)), idx.h, s.outp())
}

func (s *Scope) Gather(a Tensor, dim int, idx Tensor) Tensor {
	if !s.ok("gather", a, idx) {
		return Tensor{}
	}
	return s.op("gather", s.rt.sym.Gather, a.h, uintptr(int64(dim)), idx.h, s.outp())
}

// Cat concatenates along dim.
func (s *Scope) Cat(ts []Tensor, dim int) Tensor {
	if !s.ok("cat", ts...) || len(ts) == 0 {
		if s.err == nil {
			s.err = fmt.Errorf("torch cat: no tensors")
		}
		return Tensor{}
	}
	hs := make([]uintptr, len(ts))
	for i, t := range ts {
		hs[i] = t.h
	}
	return s.op("cat", s.rt.sym.Cat, s.handlesArg(hs), uintptr(len(hs)), uintptr(int64(dim)), s.outp())
}

// RMSNorm is Hugging Face's RMSNorm over the last dimension, computed in float32: times w in x's dtype, or,
// when offset != 0 (Gemma's 1 + w), times (offset + w) in float32.
func (s *Scope) RMSNorm(x, w Tensor, eps, offset float64) Tensor {
	if !s.ok("rms_norm", x, w) {
		return Tensor{}
	}
	s.f64[0], s.f64[1] = eps, offset
	return s.op("rms_norm", s.rt.sym.RmsNorm, x.h, w.h, ptr(&s.f64[0]), s.outp())
}

// Rope rotates x's last dimension by the given cos and sin (rotate-half convention).
func (s *Scope) Rope(x, cos, sin Tensor) Tensor {
	if !s.ok("rope", x, cos, sin) {
		return Tensor{}
	}
	return s.op("rope", s.rt.sym.Rope, x.h, cos.h, sin.h, s.outp())
}

// Dropout zeroes elements with probability p (scaling the rest) when train is set.
func (s *Scope) Dropout(x Tensor, p float64, train bool) Tensor {
	if !s.ok("dropout", x) {
		return Tensor{}
	}
	t := uintptr(0)
	if train {
		t = 1
	}
	s.f64[0] = p
	return s.op("dropout", s.rt.sym.Dropout, x.h, ptr(&s.f64[0]), t, s.outp())
}

// AdamWUpdate applies one AdamW step to param from its gradient, updating the caller-owned moment tensors.
// step counts from 1.
func (s *Scope) AdamWUpdate(param, expAvg, expAvgSq Tensor, c AdamWConfig, step int) {
	if !s.ok("adamw_update", param, expAvg, expAvgSq) {
		return
	}
	h := [6]float64{c.LR, c.Beta1, c.Beta2, c.Eps, c.WeightDecay, float64(step)}
	s.keep = &h
	s.Fail(s.rt.call("adamw_update", s.rt.sym.AdamwUpdate, param.h, expAvg.h, expAvgSq.h, ptr(&h[0])))
	s.keep = nil
}

// ZeroGrad drops param's accumulated gradient.
func (s *Scope) ZeroGrad(param Tensor) {
	if !s.ok("zero_grad", param) {
		return
	}
	s.Fail(s.rt.call("zero_grad", s.rt.sym.ZeroGrad, param.h))
}

// Stack joins tensors of one shape along a new dimension dim.
func (s *Scope) Stack(ts []Tensor, dim int) Tensor {
	if !s.ok("stack", ts...) || len(ts) == 0 {
		if s.err == nil {
			s.err = fmt.Errorf("torch stack: no tensors")
		}
		return Tensor{}
	}
	return s.op("stack", s.rt.sym.Stack, s.handlesArg(handles(ts)), uintptr(len(ts)), uintptr(int64(dim)), s.outp())
}

// Narrow is a view of length n starting at start along dim.
func (s *Scope) Narrow(a Tensor, dim int, start, n int64) Tensor {
	if !s.ok("narrow", a) {
		return Tensor{}
	}
	return s.op("narrow", s.rt.sym.Narrow, a.h, uintptr(int64(dim)), uintptr(start), uintptr(n), s.outp())
}

// Reshape to shape (-1 infers one size).
func (s *Scope) Reshape(a Tensor, shape ...int64) Tensor {
	if !s.ok("reshape", a) {
		return Tensor{}
	}
	return s.op("reshape", s.rt.sym.Reshape, a.h, s.dimsArg(shape), uintptr(len(shape)), s.outp())
}

// Expand broadcasts size-1 dims (a view).
func (s *Scope) Expand(a Tensor, shape ...int64) Tensor {
	if !s.ok("expand", a) {
		return Tensor{}
	}
	return s.op("expand", s.rt.sym.Expand, a.h, s.dimsArg(shape), uintptr(len(shape)), s.outp())
}

func (s *Scope) Transpose(a Tensor, d0, d1 int) Tensor {
	if !s.ok("transpose", a) {
		return Tensor{}
	}
	return s.op("transpose", s.rt.sym.Transpose, a.h, uintptr(int64(d0)), uintptr(int64(d1)), s.outp())
}

func (s *Scope) Permute(a Tensor, dims ...int64) Tensor {
	if !s.ok("permute", a) {
		return Tensor{}
	}
	return s.op("permute", s.rt.sym.Permute, a.h, s.dimsArg(dims), uintptr(len(dims)), s.outp())
}

// CopyInto copies src into dst in place (dst may be a view, e.g. a KV-cache slot).
func (s *Scope) CopyInto(dst, src Tensor) {
	if !s.ok("copy_", dst, src) {
		return
	}
	s.Fail(s.rt.call("copy_", s.rt.sym.Copy, dst.h, src.h))
}

func (s *Scope) Softmax(a Tensor, dim int) Tensor {
	if !s.ok("softmax", a) {
		return Tensor{}
	}
	return s.op("softmax", s.rt.sym.Softmax, a.h, uintptr(int64(dim)), s.outp())
}

func (s *Scope) LogSoftmax(a Tensor, dim int) Tensor {
	if !s.ok("log_softmax", a) {
		return Tensor{}
	}
	return s.op("log_softmax", s.rt.sym.LogSoftmax, a.h, uintptr(int64(dim)), s.outp())
}

// Attention is softmax(q k^T * scale [softcapped] [masked]) v with grouped-query heads repeated.
// mask (optional) is bool, true = attend; causal adds the causal constraint with queries at the end of the keys.
func (s *Scope) Attention(q, k, v, mask Tensor, causal bool, scale, softcap float64) Tensor {
	if !s.ok("attention", q, k, v) {
		return Tensor{}
	}
	c := int64(0)
	if causal {
		c = 1
	}
	s.f64[0], s.f64[1] = scale, softcap
	return s.op("attention", s.rt.sym.Attention, q.h, k.h, v.h, mask.h, uintptr(c), ptr(&s.f64[0]), s.outp())
}

// TopK returns the k largest values and their indices along dim.
func (s *Scope) TopK(a Tensor, k int, dim int) (Tensor, Tensor) {
	if !s.ok("topk", a) {
		return Tensor{}, Tensor{}
	}
	if err := s.rt.call("topk", s.rt.sym.Topk, a.h, uintptr(int64(k)), uintptr(int64(dim)), ptr(&s.out[0]), ptr(&s.out[1])); err != nil {
		s.err = err
		return Tensor{}, Tensor{}
	}
	vals, idx := s.out[0], s.out[1]
	s.owned = append(s.owned, vals, idx)
	return Tensor{vals}, Tensor{idx}
}

// Cap bounds <h, u> at tau along the unit vector u (given as uCol [D, 1] and uRow [D]): a floor, or a ceiling.
// It returns the new h and the clamped excess <h,u> - tau per position ([.., 1]; 0 where the cap was inactive):
// h moved by -excess along u.
func (s *Scope) Cap(h, uCol, uRow Tensor, tau float64, ceiling bool) (Tensor, Tensor) {
	if !s.ok("cap", h, uCol, uRow) {
		return Tensor{}, Tensor{}
	}
	c := uintptr(0)
	if ceiling {
		c = 1
	}
	s.f64[0] = tau
	s.out[0], s.out[1] = 0, 0
	if err := s.rt.call("cap", s.rt.sym.Cap, h.h, uCol.h, uRow.h, ptr(&s.f64[0]), c, ptr(&s.out[0]), ptr(&s.out[1])); err != nil {
		s.err = err
		return Tensor{}, Tensor{}
	}
	out, excess := s.out[0], s.out[1]
	s.owned = append(s.owned, out, excess)
	return Tensor{out}, Tensor{excess}
}

// Multinomial draws n indices per row from probabilities.
func (s *Scope) Multinomial(p Tensor, n int) Tensor {
	if !s.ok("multinomial", p) {
		return Tensor{}
	}
	return s.op("multinomial", s.rt.sym.Multinomial, p.h, uintptr(int64(n)), s.outp())
}

// Clone copies a tensor.
func (s *Scope) Clone(a Tensor) Tensor {
	if !s.ok("clone", a) {
		return Tensor{}
	}
	return s.op("clone", s.rt.sym.Clone, a.h, s.outp())
}

// SetRequiresGrad marks a leaf tensor as a parameter autograd tracks.
func (s *Scope) SetRequiresGrad(t Tensor, on bool) {
	if !s.ok("requires_grad", t) {
		return
	}
	f := int64(0)
	if on {
		f = 1
	}
	s.Fail(s.rt.call("requires_grad", s.rt.sym.SetRequiresGrad, t.h, uintptr(f)))
}

// RequiresGrad reports whether autograd tracks t.
func (s *Scope) RequiresGrad(t Tensor) bool {
	if !s.ok("requires_grad", t) {
		return false
	}
	s.Fail(s.rt.call("requires_grad", s.rt.sym.RequiresGrad, t.h, ptr(&s.i64[0])))
	v := s.i64[0]
	return v == 1
}

// Backward backpropagates from a scalar.
func (s *Scope) Backward(t Tensor) {
	if !s.ok("backward", t) {
		return
	}
	s.Fail(s.rt.call("backward", s.rt.sym.Backward, t.h))
}

// Grad returns t's accumulated gradient, or the zero Tensor when there is none.
func (s *Scope) Grad(t Tensor) Tensor {
	if !s.ok("grad", t) {
		return Tensor{}
	}
	return s.op("grad", s.rt.sym.Grad, t.h, s.outp())
}

// ClipGradNorm scales the gradients of params so their global L2 norm is at most maxNorm; returns the norm before.
func (s *Scope) ClipGradNorm(params []Tensor, maxNorm float64) float64 {
	if !s.ok("clip_grad_norm", params...) || len(params) == 0 {
		return 0
	}
	hs := handles(params)
	var total float64
	s.Fail(s.rt.check("clip_grad_norm", s.rt.clipGradNorm(&hs[0], int64(len(hs)), maxNorm, &total)))
	return total
}

func handles(ts []Tensor) []uintptr {
	hs := make([]uintptr, len(ts))
	for i, t := range ts {
		hs[i] = t.h
	}
	return hs
}

// AdamW is libtorch's AdamW over a fixed parameter list.
type AdamW struct {
	rt *Runtime
	h  uintptr
}

// AdamWConfig holds the optimizer's hyper-parameters (PyTorch's names and defaults).
type AdamWConfig struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
}

// NewAdamW makes an optimizer over params.
func (r *Runtime) NewAdamW(params []Tensor, c AdamWConfig) (*AdamW, error) {
	if len(params) == 0 {
		return nil, fmt.Errorf("adamw: no parameters to optimize")
	}
	hs := handles(params)
	var h uintptr
	if err := r.check("adamw_new", r.adamwNew(&hs[0], int64(len(hs)), c.LR, c.Beta1, c.Beta2, c.Eps, c.WeightDecay, &h)); err != nil {
		return nil, err
	}
	return &AdamW{rt: r, h: h}, nil
}

func (o *AdamW) Step() error            { return o.rt.check("adamw_step", o.rt.adamwStep(o.h)) }
func (o *AdamW) ZeroGrad() error        { return o.rt.check("adamw_zero_grad", o.rt.adamwZeroGrad(o.h)) }
func (o *AdamW) SetLR(lr float64) error { return o.rt.check("adamw_set_lr", o.rt.adamwSetLR(o.h, lr)) }

// Close frees the optimizer and its state.
func (o *AdamW) Close() {
	if o.h != 0 {
		o.rt.adamwFree(o.h)
		o.h = 0
	}
}
