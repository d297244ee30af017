package torch

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"
)

// DType is a tensor element type; the values are the shim's codes.
type DType int64

const (
	Float32  DType = 0
	Float16  DType = 1
	BFloat16 DType = 2
	Int64    DType = 3
	Int32    DType = 4
	Bool     DType = 5
	Uint8    DType = 6
	Float64  DType = 7
	Int8     DType = 8
)

var dtypeNames = map[DType]string{Float32: "f32", Float16: "f16", BFloat16: "bf16", Int64: "i64", Int32: "i32", Bool: "bool", Uint8: "u8", Float64: "f64", Int8: "i8"}

func (d DType) String() string {
	if n, ok := dtypeNames[d]; ok {
		return n
	}
	return "dtype(" + strconv.Itoa(int(d)) + ")"
}

// Size is the element size in bytes.
func (d DType) Size() int {
	switch d {
	case Float32, Int32:
		return 4
	case Float16, BFloat16:
		return 2
	case Int64, Float64:
		return 8
	default:
		return 1
	}
}

// ParseDType reads the names --dtype accepts.
func ParseDType(s string) (DType, error) {
	switch strings.ToLower(s) {
	case "f32", "float32", "float":
		return Float32, nil
	case "f16", "float16", "half":
		return Float16, nil
	case "bf16", "bfloat16":
		return BFloat16, nil
	}
	return 0, fmt.Errorf("unsupported dtype %q: use f32, f16 or bf16", s)
}

// Device is a compute device: CPU or CUDA:N.
type Device struct {
	CUDA  bool
	Index int
}

// CPU is the host device.
var CPU = Device{}

func (d Device) String() string {
	if !d.CUDA {
		return "cpu"
	}
	return "cuda:" + strconv.Itoa(d.Index)
}

func (d Device) codes() (int64, int64) {
	if d.CUDA {
		return 1, int64(d.Index)
	}
	return 0, -1
}

// ParseDevice reads "cpu", "cuda" or "cuda:N".
func ParseDevice(s string) (Device, error) {
	switch {
	case s == "cpu" || s == "":
		return CPU, nil
	case s == "cuda":
		return Device{CUDA: true}, nil
	case strings.HasPrefix(s, "cuda:"):
		n, err := strconv.Atoi(s[5:])
		if err != nil || n < 0 {
			return CPU, fmt.Errorf("bad device %q: use cpu, cuda or cuda:N", s)
		}
		return Device{CUDA: true, Index: n}, nil
	}
	return CPU, fmt.Errorf("bad device %q: use cpu, cuda or cuda:N", s)
}

// CheckDevice fails with a clear message when d is CUDA and libtorch has no such device.
func (r *Runtime) CheckDevice(d Device) error {
	if !d.CUDA {
		return nil
	}
	n := r.CUDADeviceCount()
	if n == 0 {
		return fmt.Errorf("device %s asked for, but libtorch sees no CUDA device (%s): use --device cpu, or build the shim against a CUDA libtorch (`make setup` with a CUDA-enabled python torch)", d, r.Info)
	}
	if d.Index >= n {
		return fmt.Errorf("device %s asked for, but only %d CUDA device(s) exist: use cuda:0..cuda:%d", d, n, n-1)
	}
	return nil
}

// Tensor is a handle to a libtorch tensor. It is owned by the Scope that made it; the zero Tensor is "none".
type Tensor struct{ h uintptr }

// Valid reports whether t refers to a tensor.
func (t Tensor) Valid() bool { return t.h != 0 }

// Scope owns tensors: every tensor an op returns is registered in the scope that ran the op and released by
// Close. Errors are sticky: after the first failure every op returns the zero Tensor and Err reports the failure,
// so model code reads like straight-line math and checks once.
type Scope struct {
	out    [2]uintptr // result slots of shim calls
	f64    [2]float64 // doubles passed by pointer
	i64    [3]int64
	dims   [16]int64 // shape arguments and results
	hs     []uintptr // handle-list arguments
	keep   any       // host buffer of the call in flight
	rt     *Runtime
	owned  []uintptr
	gone   []uintptr // ReleaseSince's list of handles to free, reused
	err    error
	noGrad bool
	prev   int64

	autocast     bool
	autocastDev  Device
	autocastPrev int64
}

// NewScope makes an empty scope.
//
// It is never inlined: the shim writes results into the Scope's fields through addresses Go cannot track, so
// the Scope must live on the heap (which never moves), and returning it from a real call guarantees that.
//
//go:noinline
func (r *Runtime) NewScope() *Scope { return &Scope{rt: r} }

// Runtime is the runtime the scope's ops run on.
func (s *Scope) Runtime() *Runtime { return s.rt }

// NoGrad disables autograd recording until Close. It pins the goroutine to its OS thread because libtorch's
// grad mode is thread-local.
func (s *Scope) NoGrad() *Scope {
	if !s.noGrad {
		runtime.LockOSThread()
		s.prev = s.rt.setGradEnabled(0)
		s.noGrad = true
	}
	return s
}

// Autocast runs the scope's ops under autocast (mixed precision: matmuls in dtype, reductions in float32) on
// dev's device type until Close. Like NoGrad it pins the goroutine to its thread: autocast state is thread-local.
func (s *Scope) Autocast(dev Device, dtype DType) *Scope {
	if s.autocast {
		return s
	}
	runtime.LockOSThread()
	dt, _ := dev.codes()
	prev := s.rt.setAutocast(dt, 1, int64(dtype))
	if prev < 0 {
		runtime.UnlockOSThread()
		s.Fail(fmt.Errorf("torch autocast: %s %s is not supported by this libtorch", dev, dtype))
		return s
	}
	s.autocast, s.autocastDev, s.autocastPrev = true, dev, prev
	return s
}

// Err is the first error any op in the scope hit.
func (s *Scope) Err() error { return s.err }

// Fail records err (if none is recorded yet) so the scope stops computing.
func (s *Scope) Fail(err error) {
	if s.err == nil && err != nil {
		s.err = err
	}
}

// Len is the number of tensors the scope owns.
func (s *Scope) Len() int { return len(s.owned) }

// Close releases every tensor the scope owns and restores grad mode.
func (s *Scope) Close() {
	s.freeAll(s.owned)
	s.owned = s.owned[:0]
	if s.noGrad {
		s.rt.setGradEnabled(s.prev)
		runtime.UnlockOSThread()
		s.noGrad = false
	}
	if s.autocast {
		dt, _ := s.autocastDev.codes()
		s.rt.setAutocast(dt, s.autocastPrev, int64(BFloat16))
		runtime.UnlockOSThread()
		s.autocast = false
	}
}

// Release frees all tensors owned so far but keeps the scope usable (per-step arenas inside a loop).
func (s *Scope) Release() {
	s.freeAll(s.owned)
	s.owned = s.owned[:0]
}

// freeAll frees handles in one shim call (one purego call instead of one per tensor: a decode step makes ~100).
func (s *Scope) freeAll(hs []uintptr) {
	if len(hs) == 0 {
		return
	}
	purego.SyscallN(s.rt.sym.FreeMany, s.handlesArg(hs), uintptr(len(hs)))
}

// Mark is the position of the next tensor the scope will own (see ReleaseSince).
func (s *Scope) Mark() int { return len(s.owned) }

// ReleaseSince frees the tensors made since mark except keep: a loop's intermediates (one decoder layer's) go as
// soon as the loop moves on, so a forward pass holds one layer's activations, not all of them. Autograd keeps its
// own references to what backward needs, so this is safe under grad mode too.
func (s *Scope) ReleaseSince(mark int, keep ...Tensor) {
	if mark < 0 || mark > len(s.owned) {
		return
	}
	kept, gone := s.owned[:mark], s.gone[:0]
	for _, h := range s.owned[mark:] { // kept never overtakes the element being read
		if slices.ContainsFunc(keep, func(t Tensor) bool { return t.h == h }) {
			kept = append(kept, h)
			continue
		}
		gone = append(gone, h)
	}
	s.owned, s.gone = kept, gone
	s.freeAll(gone)
}

// MoveTo transfers ownership of ts from s to dst.
func (s *Scope) MoveTo(dst *Scope, ts ...Tensor) {
	for _, t := range ts {
		if !t.Valid() {
			continue
		}
		for i := len(s.owned) - 1; i >= 0; i-- {
			if s.owned[i] == t.h {
				s.owned = append(s.owned[:i], s.owned[i+1:]...)
				dst.owned = append(dst.owned, t.h)
				break
			}
		}
	}
}

// Free releases one tensor early.
func (s *Scope) Free(t Tensor) {
	for i := len(s.owned) - 1; i >= 0; i-- {
		if s.owned[i] == t.h {
			s.owned = append(s.owned[:i], s.owned[i+1:]...)
			s.rt.free(t.h)
			return
		}
	}
}

// op executes one shim call whose last argument is s.outp() and which yields a tensor.
func (s *Scope) op(op string, fn uintptr, args ...uintptr) Tensor {
	if s.err != nil {
		return Tensor{}
	}
	if err := s.rt.call(op, fn, args...); err != nil {
		s.err = err
		return Tensor{}
	}
	out := s.out[0]
	if out != 0 {
		s.owned = append(s.owned, out)
	}
	return Tensor{out}
}

// ok reports whether ops may run on the given inputs, recording a clear error for a missing input.
func (s *Scope) ok(op string, ts ...Tensor) bool {
	if s.err != nil {
		return false
	}
	for _, t := range ts {
		if !t.Valid() {
			s.err = fmt.Errorf("torch %s: missing input tensor", op)
			return false
		}
	}
	return true
}

// Pointers handed to the shim through purego.SyscallN must point into memory that cannot move: Go may copy a
// goroutine's stack between taking an address and the call, so every argument buffer lives in the
// heap-allocated Scope (or is pinned in s.keep).

// dimsArg copies a shape into the scope's buffer.
func (s *Scope) dimsArg(shape []int64) uintptr {
	if len(shape) > len(s.dims) {
		s.Fail(fmt.Errorf("torch: %d dimensions (at most %d)", len(shape), len(s.dims)))
		return 0
	}
	copy(s.dims[:], shape)
	return ptr(&s.dims[0])
}

// handlesArg copies tensor handles into the scope's buffer.
func (s *Scope) handlesArg(hs []uintptr) uintptr {
	s.hs = append(s.hs[:0], hs...)
	return ptr(&s.hs[0])
}

// outp is where the shim writes a result handle: a field of the heap-allocated Scope, so it never moves.
func (s *Scope) outp() uintptr {
	s.out[0] = 0
	return ptr(&s.out[0])
}

// FromData copies host data (a []float32, []int64, []int32, []uint16 (raw f16/bf16 bits), []byte or []bool)
// into a new tensor of the given dtype on dev.
func (s *Scope) FromData(data any, dtype DType, shape []int64, dev Device) Tensor {
	if s.err != nil {
		return Tensor{}
	}
	p, nbytes := dataPtr(data)
	want := dtype.Size()
	for _, d := range shape {
		want *= int(d)
	}
	if nbytes != want {
		s.err = fmt.Errorf("torch from_data: %d bytes of data for shape %v of %s (%d bytes)", nbytes, shape, dtype, want)
		return Tensor{}
	}
	var scratch [1]byte
	if p == nil {
		p = unsafe.Pointer(&scratch[0])
	}
	dt, di := dev.codes()
	s.keep = data // forces the data onto the heap, where it cannot move during the call
	t := s.op("from_data", s.rt.sym.FromData, uintptr(p), uintptr(dtype), s.dimsArg(shape), uintptr(len(shape)), uintptr(dt), uintptr(di), s.outp())
	s.keep = nil
	runtime.KeepAlive(data)
	return t
}

func dataPtr(data any) (unsafe.Pointer, int) {
	switch d := data.(type) {
	case []float32:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0]), 4 * len(d)
		}
	case []float64:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0]), 8 * len(d)
		}
	case []int64:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0]), 8 * len(d)
		}
	case []int32:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0]), 4 * len(d)
		}
	case []uint16:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0]), 2 * len(d)
		}
	case []byte:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0]), len(d)
		}
	case []bool:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0]), len(d)
		}
	default:
		panic(fmt.Sprintf("torch: unsupported host data type %T", data))
	}
	return nil, 0
}

// FromBlob wraps memory that is not Go's (an mmap'ed file) without copying. The memory must outlive the tensor.
func (s *Scope) FromBlob(p unsafe.Pointer, dtype DType, shape []int64) Tensor {
	return s.op("from_blob", s.rt.sym.FromBlob, uintptr(p), uintptr(dtype), s.dimsArg(shape), uintptr(len(shape)), s.outp())
}

// Full makes a tensor filled with v.
func (s *Scope) Full(shape []int64, v float64, dtype DType, dev Device) Tensor {
	dt, di := dev.codes()
	s.f64[0] = v
	return s.op("full", s.rt.sym.Full, s.dimsArg(shape), uintptr(len(shape)), ptr(&s.f64[0]), uintptr(dtype), uintptr(dt), uintptr(di), s.outp())
}

// Zeros makes a zero tensor.
func (s *Scope) Zeros(shape []int64, dtype DType, dev Device) Tensor {
	return s.Full(shape, 0, dtype, dev)
}

// Randn draws standard normal values from libtorch's generator (seeded by ManualSeed).
func (s *Scope) Randn(shape []int64, dtype DType, dev Device) Tensor {
	dt, di := dev.codes()
	return s.op("randn", s.rt.sym.Randn, s.dimsArg(shape), uintptr(len(shape)), uintptr(dtype), uintptr(dt), uintptr(di), s.outp())
}

// To converts dtype and/or device (returns a new handle; may share storage when nothing changes).
func (s *Scope) To(t Tensor, dtype DType, dev Device) Tensor {
	if !s.ok("to", t) {
		return Tensor{}
	}
	dt, di := dev.codes()
	return s.op("to", s.rt.sym.To, t.h, uintptr(int64(dtype)), uintptr(dt), uintptr(di), s.outp())
}

// Shape returns the tensor's sizes.
func (s *Scope) Shape(t Tensor) []int64 {
	if !s.ok("shape", t) {
		return nil
	}
	if err := s.rt.call("shape", s.rt.sym.Shape, t.h, ptr(&s.dims[0]), uintptr(len(s.dims)), ptr(&s.i64[0])); err != nil {
		s.err = err
		return nil
	}
	return append([]int64(nil), s.dims[:min(int(s.i64[0]), len(s.dims))]...)
}

// DType returns the tensor's element type.
func (s *Scope) DType(t Tensor) DType {
	dt, _ := s.Meta(t)
	return dt
}

// Meta returns dtype and device.
func (s *Scope) Meta(t Tensor) (DType, Device) {
	if !s.ok("meta", t) {
		return 0, CPU
	}
	if err := s.rt.call("meta", s.rt.sym.Meta, t.h, ptr(&s.i64[0]), ptr(&s.i64[1]), ptr(&s.i64[2])); err != nil {
		s.err = err
		return 0, CPU
	}
	if s.i64[1] == 1 {
		return DType(s.i64[0]), Device{CUDA: true, Index: int(s.i64[2])}
	}
	return DType(s.i64[0]), CPU
}

// Item reads a one-element tensor.
func (s *Scope) Item(t Tensor) float64 {
	if !s.ok("item", t) {
		return 0
	}
	s.Fail(s.rt.call("item", s.rt.sym.Item, t.h, ptr(&s.f64[0])))
	return s.f64[0]
}

// SharesStorage reports whether two tensors start at the same memory.
func (s *Scope) SharesStorage(a, b Tensor) bool {
	if !s.ok("shares_storage", a, b) {
		return false
	}
	s.Fail(s.rt.call("shares_storage", s.rt.sym.SharesStorage, a.h, b.h, ptr(&s.i64[0])))
	return s.i64[0] == 1
}

// CopyToHost copies t (converted to the dtype dst implies) into dst, which must have exactly t's element count.
func (s *Scope) CopyToHost(t Tensor, dst any) {
	if !s.ok("to_host", t) {
		return
	}
	var want DType
	switch dst.(type) {
	case []float32:
		want = Float32
	case []float64:
		want = Float64
	case []int64:
		want = Int64
	case []int32:
		want = Int32
	case []bool:
		want = Bool
	case []byte:
		want = Uint8
	default:
		s.err = fmt.Errorf("torch to_host: unsupported destination %T", dst)
		return
	}
	if dt, _ := s.Meta(t); dt != want {
		t = s.To(t, want, CPU)
	}
	p, n := dataPtr(dst)
	if s.err != nil || p == nil {
		return
	}
	s.keep = dst // forces the destination onto the heap, where it cannot move during the call
	s.Fail(s.rt.call("to_host", s.rt.sym.ToHost, t.h, uintptr(p), uintptr(n)))
	s.keep = nil
	runtime.KeepAlive(dst)
}

// Float32s copies t to a new []float32.
func (s *Scope) Float32s(t Tensor) []float32 {
	n := numel(s.Shape(t))
	out := make([]float32, n)
	s.CopyToHost(t, out)
	return out
}

// Int64s copies t to a new []int64.
func (s *Scope) Int64s(t Tensor) []int64 {
	n := numel(s.Shape(t))
	out := make([]int64, n)
	s.CopyToHost(t, out)
	return out
}

func numel(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}

// Numel is the element count of a shape.
func Numel(shape []int64) int { return numel(shape) }
