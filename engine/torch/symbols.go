package torch

import (
	"unsafe"

	"github.com/ebitengine/purego"
)

// symbols are the addresses of the shim's hot entry points. They take only integers and pointers, so
// purego.SyscallN calls them directly; reflection-based bindings cost ~0.4 µs more per op, which adds up over the
// few hundred ops of a decode step.
type symbols struct {
	Free            uintptr
	FreeMany        uintptr
	FromData        uintptr
	FromBlob        uintptr
	Full            uintptr
	Randn           uintptr
	To              uintptr
	ToHost          uintptr
	Shape           uintptr
	Meta            uintptr
	Item            uintptr
	SharesStorage   uintptr
	Clone           uintptr
	Binary          uintptr
	Unary           uintptr
	Scalar          uintptr
	Linear          uintptr
	Where           uintptr
	MaskedFill      uintptr
	Reduce          uintptr
	Embedding       uintptr
	IndexSelect     uintptr
	Gather          uintptr
	Cat             uintptr
	Narrow          uintptr
	Reshape         uintptr
	Expand          uintptr
	Transpose       uintptr
	Permute         uintptr
	Copy            uintptr
	Softmax         uintptr
	LogSoftmax      uintptr
	Attention       uintptr
	Topk            uintptr
	Cap             uintptr
	Stack           uintptr
	RmsNorm         uintptr
	Rope            uintptr
	AdamwUpdate     uintptr
	ZeroGrad        uintptr
	Dropout         uintptr
	Multinomial     uintptr
	SetRequiresGrad uintptr
	RequiresGrad    uintptr
	Backward        uintptr
	Grad            uintptr
	DecoderNew      uintptr
	DecoderFree     uintptr
	StepHooksNew    uintptr
	StepHooksFree   uintptr
	DecoderStep     uintptr
}

type symbolRef struct {
	name string
	addr *uintptr
}

func (s *symbols) table() []symbolRef {
	return []symbolRef{
		{"kt_free", &s.Free}, {"kt_free_many", &s.FreeMany},
		{"kt_from_data", &s.FromData},
		{"kt_from_blob", &s.FromBlob},
		{"kt_full", &s.Full},
		{"kt_randn", &s.Randn},
		{"kt_to", &s.To},
		{"kt_to_host", &s.ToHost},
		{"kt_shape", &s.Shape},
		{"kt_meta", &s.Meta},
		{"kt_item", &s.Item},
		{"kt_shares_storage", &s.SharesStorage},
		{"kt_clone", &s.Clone},
		{"kt_binary", &s.Binary},
		{"kt_unary", &s.Unary},
		{"kt_scalar", &s.Scalar},
		{"kt_linear", &s.Linear},
		{"kt_where", &s.Where},
		{"kt_masked_fill", &s.MaskedFill},
		{"kt_reduce", &s.Reduce},
		{"kt_embedding", &s.Embedding},
		{"kt_index_select", &s.IndexSelect},
		{"kt_gather", &s.Gather},
		{"kt_cat", &s.Cat},
		{"kt_narrow", &s.Narrow},
		{"kt_reshape", &s.Reshape},
		{"kt_expand", &s.Expand},
		{"kt_transpose", &s.Transpose},
		{"kt_permute", &s.Permute},
		{"kt_copy_", &s.Copy},
		{"kt_softmax", &s.Softmax},
		{"kt_log_softmax", &s.LogSoftmax},
		{"kt_attention", &s.Attention},
		{"kt_topk", &s.Topk},
		{"kt_cap", &s.Cap},
		{"kt_stack", &s.Stack},
		{"kt_rms_norm", &s.RmsNorm},
		{"kt_rope", &s.Rope},
		{"kt_adamw_update", &s.AdamwUpdate},
		{"kt_zero_grad", &s.ZeroGrad},
		{"kt_dropout", &s.Dropout},
		{"kt_multinomial", &s.Multinomial},
		{"kt_set_requires_grad", &s.SetRequiresGrad},
		{"kt_requires_grad", &s.RequiresGrad},
		{"kt_backward", &s.Backward},
		{"kt_grad", &s.Grad},
		{"kt_decoder_new", &s.DecoderNew}, {"kt_decoder_free", &s.DecoderFree},
		{"kt_step_hooks_new", &s.StepHooksNew}, {"kt_step_hooks_free", &s.StepHooksFree},
		{"kt_decoder_step", &s.DecoderStep},
	}
}

// call invokes an entry point and converts its error string.
func (r *Runtime) call(op string, fn uintptr, args ...uintptr) error {
	p, _, _ := purego.SyscallN(fn, args...)
	return r.check(op, p)
}

// ptr is the address of a Go value for the duration of one call.
func ptr[T any](p *T) uintptr { return uintptr(unsafe.Pointer(p)) }

func (r *Runtime) free(h uintptr) { purego.SyscallN(r.sym.Free, h) }
