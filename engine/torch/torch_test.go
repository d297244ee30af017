package torch_test

import (
	"math"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

func TestOpsAgainstHandComputed(t *testing.T) {
	rt := torchtest.Runtime(t)
	s := rt.NewScope()
	defer s.Close()
	a := s.FromData([]float32{1, 2, 3, 4, 5, 6}, torch.Float32, []int64{2, 3}, torch.CPU)
	b := s.FromData([]float32{1, 0, 0, 1, 1, 1}, torch.Float32, []int64{3, 2}, torch.CPU)
	got := s.Float32s(s.Matmul(a, b))
	want := []float32{4, 5, 10, 11}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("matmul = %v, want %v", got, want)
		}
	}
	sm := s.Float32s(s.Softmax(s.FromData([]float32{0, 0, math.Float32frombits(0x3f317218)}, torch.Float32, []int64{3}, torch.CPU), 0))
	// softmax(0, 0, ln 2) = (1/4, 1/4, 1/2)
	if math.Abs(float64(sm[2])-0.5) > 1e-6 || math.Abs(float64(sm[0])-0.25) > 1e-6 {
		t.Fatalf("softmax = %v", sm)
	}
	ids := s.FromData([]int64{2, 0}, torch.Int64, []int64{2}, torch.CPU)
	emb := s.Float32s(s.Embedding(s.Reshape(a, 3, 2), ids))
	if emb[0] != 5 || emb[1] != 6 || emb[2] != 1 {
		t.Fatalf("embedding = %v", emb)
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestErrorsAreStickyAndReadable(t *testing.T) {
	rt := torchtest.Runtime(t)
	s := rt.NewScope()
	defer s.Close()
	a := s.Zeros([]int64{2, 3}, torch.Float32, torch.CPU)
	b := s.Zeros([]int64{2, 3}, torch.Float32, torch.CPU)
	c := s.Matmul(a, b) // shape mismatch
	if c.Valid() || s.Err() == nil {
		t.Fatal("matmul of 2x3 by 2x3 did not fail")
	}
	if strings.Contains(s.Err().Error(), "\n") || !strings.Contains(s.Err().Error(), "matmul") {
		t.Fatalf("error not one line naming the op: %q", s.Err())
	}
	if d := s.Add(a, b); d.Valid() {
		t.Fatal("op after an error ran")
	}
}

func TestAttentionMatchesExplicitSoftmax(t *testing.T) {
	rt := torchtest.Runtime(t)
	s := rt.NewScope()
	defer s.Close()
	if err := rt.ManualSeed(1); err != nil {
		t.Fatal(err)
	}
	q := s.Randn([]int64{1, 4, 5, 8}, torch.Float32, torch.CPU)
	k := s.Randn([]int64{1, 2, 5, 8}, torch.Float32, torch.CPU)
	v := s.Randn([]int64{1, 2, 5, 8}, torch.Float32, torch.CPU)
	scale := 1 / math.Sqrt(8)
	fast := s.Float32s(s.Attention(q, k, v, torch.Tensor{}, true, scale, 0))
	// Explicit: repeat kv heads, causal mask, softmax.
	kr := s.Reshape(s.Expand(s.Reshape(k, 1, 2, 1, 5, 8), 1, 2, 2, 5, 8), 1, 4, 5, 8)
	vr := s.Reshape(s.Expand(s.Reshape(v, 1, 2, 1, 5, 8), 1, 2, 2, 5, 8), 1, 4, 5, 8)
	scores := s.MulScalar(s.Matmul(q, s.Transpose(kr, 2, 3)), scale)
	mask := make([]bool, 25)
	for i := 0; i < 5; i++ {
		for j := i + 1; j < 5; j++ {
			mask[i*5+j] = true
		}
	}
	scores = s.MaskedFill(scores, s.FromData(mask, torch.Bool, []int64{5, 5}, torch.CPU), math.Inf(-1))
	slow := s.Float32s(s.Matmul(s.Softmax(scores, -1), vr))
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	for i := range fast {
		if math.Abs(float64(fast[i]-slow[i])) > 1e-5 {
			t.Fatalf("attention[%d] = %v, explicit %v", i, fast[i], slow[i])
		}
	}
}

func TestAutogradAndAdamW(t *testing.T) {
	rt := torchtest.Runtime(t)
	params := rt.NewScope()
	defer params.Close()
	w := params.FromData([]float32{3}, torch.Float32, []int64{1}, torch.CPU)
	params.SetRequiresGrad(w, true)
	opt, err := rt.NewAdamW([]torch.Tensor{w}, torch.AdamWConfig{LR: 0.1, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8})
	if err != nil {
		t.Fatal(err)
	}
	defer opt.Close()
	for step := 0; step < 200; step++ {
		s := rt.NewScope()
		loss := s.Sum(s.Square(w), torch.AllDims, false) // d/dw w^2 = 2w
		s.Backward(loss)
		if step == 0 {
			if g := s.Float32s(s.Grad(w)); g[0] != 6 {
				t.Fatalf("grad of w^2 at 3 = %v, want 6", g)
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if err := opt.Step(); err != nil {
			t.Fatal(err)
		}
		if err := opt.ZeroGrad(); err != nil {
			t.Fatal(err)
		}
	}
	if v := params.Float32s(w)[0]; math.Abs(float64(v)) > 0.1 {
		t.Fatalf("AdamW did not minimise w^2: w = %v", v)
	}
}

func TestCUDAWhereNoneGivesClearError(t *testing.T) {
	rt := torchtest.Runtime(t)
	if rt.CUDAAvailable() {
		t.Logf("CUDA present (%s): checking an out-of-range index instead", rt.Info)
		if err := rt.CheckDevice(torch.Device{CUDA: true, Index: 99}); err == nil {
			t.Fatal("cuda:99 accepted")
		}
		return
	}
	err := rt.CheckDevice(torch.Device{CUDA: true})
	if err == nil || !strings.Contains(err.Error(), "--device cpu") {
		t.Fatalf("want a clear CUDA error, got %v", err)
	}
	s := rt.NewScope()
	defer s.Close()
	s.Zeros([]int64{2}, torch.Float32, torch.Device{CUDA: true})
	if s.Err() == nil {
		t.Fatal("allocating on CUDA without CUDA did not fail")
	}
}

func TestAutocastRunsMatmulsInBF16(t *testing.T) {
	rt := torchtest.Runtime(t)
	s := rt.NewScope().Autocast(torch.CPU, torch.BFloat16)
	a := s.Randn([]int64{4, 4}, torch.Float32, torch.CPU)
	if dt := s.DType(s.Matmul(a, a)); dt != torch.BFloat16 || s.Err() != nil {
		t.Fatalf("matmul under autocast gave %s (%v)", dt, s.Err())
	}
	s.Close()
	s2 := rt.NewScope()
	defer s2.Close()
	b := s2.Randn([]int64{4, 4}, torch.Float32, torch.CPU)
	if dt := s2.DType(s2.Matmul(b, b)); dt != torch.Float32 {
		t.Fatalf("autocast leaked past Close: matmul gave %s", dt)
	}
}

// Under autograd, attention keeps only q, k and v and recomputes its scores in the backward pass: its gradients
// equal those of the explicit ops (grouped heads, a padding mask with causality, a soft cap, and 200 queries, past
// the 128-query blocks of long causal inputs).
func TestAttentionGradientsMatchExplicitOps(t *testing.T) {
	rt := torchtest.Runtime(t)
	if err := rt.ManualSeed(2); err != nil {
		t.Fatal(err)
	}
	const T, D = 200, 8
	for _, softcap := range []float64{0, 5} {
		grads := map[bool][][]float32{}
		for _, explicit := range []bool{false, true} {
			s := rt.NewScope()
			if err := rt.ManualSeed(3); err != nil {
				t.Fatal(err)
			}
			q := s.Randn([]int64{2, 4, T, D}, torch.Float32, torch.CPU)
			k := s.Randn([]int64{2, 2, T, D}, torch.Float32, torch.CPU)
			v := s.Randn([]int64{2, 2, T, D}, torch.Float32, torch.CPU)
			w := s.Randn([]int64{2, 4, T, D}, torch.Float32, torch.CPU)
			for _, x := range []torch.Tensor{q, k, v} {
				s.SetRequiresGrad(x, true)
			}
			allowed := make([]bool, 2*T*T) // row 1 has 7 padding positions; a padding query sees itself
			for b := 0; b < 2; b++ {
				for i := 0; i < T; i++ {
					for j := 0; j <= i; j++ {
						allowed[(b*T+i)*T+j] = b == 0 || j >= 7 || j == i
					}
				}
			}
			mask := s.FromData(allowed, torch.Bool, []int64{2, 1, T, T}, torch.CPU)
			scale := 1 / math.Sqrt(D)
			var out torch.Tensor
			if explicit {
				kr := s.Reshape(s.Expand(s.Reshape(k, 2, 2, 1, T, D), 2, 2, 2, T, D), 2, 4, T, D)
				vr := s.Reshape(s.Expand(s.Reshape(v, 2, 2, 1, T, D), 2, 2, 2, T, D), 2, 4, T, D)
				scores := s.MulScalar(s.Matmul(q, s.Transpose(kr, 2, 3)), scale)
				if softcap > 0 {
					scores = s.MulScalar(s.Tanh(s.DivScalar(scores, softcap)), softcap)
				}
				scores = s.MaskedFill(scores, s.LogicalNot(mask), math.Inf(-1))
				out = s.Matmul(s.Softmax(scores, -1), vr)
			} else {
				out = s.Attention(q, k, v, mask, true, scale, softcap)
			}
			s.Backward(s.Sum(s.Mul(out, w), torch.AllDims, false))
			for _, x := range []torch.Tensor{q, k, v} {
				grads[explicit] = append(grads[explicit], s.Float32s(s.Grad(x)))
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			s.Close()
		}
		for i, name := range []string{"q", "k", "v"} {
			got, want := grads[false][i], grads[true][i]
			for j := range want {
				if math.Abs(float64(got[j]-want[j])) > 1e-4*(1+math.Abs(float64(want[j]))) {
					t.Fatalf("softcap %v: d/d%s[%d] = %v, explicit ops give %v", softcap, name, j, got[j], want[j])
				}
			}
		}
	}
}
