package train

import (
	"math"
	"testing"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestKLRewardsAndGAEByHand(t *testing.T) {
	r := KLRewards([]float64{-1, -2, -0.5}, []float64{-1.5, -2, -0.25}, 2, 0.1)
	// -0.1 * (0.5, 0, -0.25) with the score 2 on the last token
	if !near(r[0], -0.05) || !near(r[1], 0) || !near(r[2], 0.025+2) {
		t.Fatalf("KL rewards %v", r)
	}
	values := []float64{0.5, 1.0, 1.5}
	adv, ret := GAE(r, values, 1.0, 0.95)
	// Backwards: delta2 = r2 + 0 - 1.5; A2 = delta2. delta1 = r1 + 1.5 - 1.0; A1 = delta1 + 0.95 A2.
	// delta0 = r0 + 1.0 - 0.5; A0 = delta0 + 0.95 A1.
	d2 := 2.025 - 1.5
	d1 := 0 + 1.5 - 1.0
	d0 := -0.05 + 1.0 - 0.5
	a2 := d2
	a1 := d1 + 0.95*a2
	a0 := d0 + 0.95*a1
	for i, w := range []float64{a0, a1, a2} {
		if !near(adv[i], w) || !near(ret[i], w+values[i]) {
			t.Fatalf("GAE token %d: advantage %v return %v, by hand %v %v", i, adv[i], ret[i], w, w+values[i])
		}
	}
	// gamma 0.5, lam 0: one-step TD errors.
	adv, _ = GAE([]float64{1, 1}, []float64{2, 4}, 0.5, 0)
	if !near(adv[0], 1+0.5*4-2) || !near(adv[1], 1-4) {
		t.Fatalf("TD(0) advantages %v", adv)
	}
}

func TestRunningMomentsNormaliseAndClip(t *testing.T) {
	var m RunningMoments
	m.Update(1, 2, 3, 4)
	std := math.Sqrt(((1.5*1.5)*2 + 0.5*0.5*2) / 3) // sample std of 1..4
	if v := m.Normalize(4, 10); !near(v, (4-2.5)/std) {
		t.Fatalf("normalised 4 = %v, want %v", v, (4-2.5)/std)
	}
	if v := m.Normalize(100, 3); v != 3 {
		t.Fatalf("clip: %v", v)
	}
}

// The clipped surrogate and clipped value loss, value and gradient, on two responses (the second one token
// shorter) against the formulas worked by hand.
func TestPPOLossByHand(t *testing.T) {
	rt := torchtest.Runtime(t)
	logp := []float64{-0.9, -1.0, -2.0, -0.1, -3.0, -0.7}
	logpOld := []float64{-1.0, -1.5, -2.0, -0.1, -2.5, -0.7}
	adv := []float64{1.0, -0.5, 2.0, 0.3, 1.5, 9.0}
	values := []float64{0.5, 1.2, 0.0, 0.1, 0.9, 5.0}
	valuesOld := []float64{0.4, 0.8, 0.0, 0.1, 1.0, 5.0}
	returns := []float64{1.0, 1.0, 0.5, 0.0, 0.5, 5.0}
	mask := []float64{1, 1, 1, 1, 1, 0}
	c := PPOLossConfig{Cliprange: 0.2, CliprangeValue: 0.2, VFCoef: 0.5}
	n := 5.0
	var wantLoss float64
	wantGradP, wantGradV := make([]float64, 6), make([]float64, 6)
	clipped, vclipped := 0, 0
	for i := range logp {
		if mask[i] == 0 {
			continue
		}
		ratio := math.Exp(logp[i] - logpOld[i])
		cr := math.Min(math.Max(ratio, 0.8), 1.2)
		unc, clp := -adv[i]*ratio, -adv[i]*cr
		if unc >= clp {
			wantLoss += unc / n
			wantGradP[i] = -adv[i] * ratio / n
		} else {
			wantLoss += clp / n // flat in logp: the clamp is active
		}
		if math.Abs(ratio-1) > 0.2 {
			clipped++
		}
		vc := valuesOld[i] + math.Min(math.Max(values[i]-valuesOld[i], -0.2), 0.2)
		u, w := math.Pow(values[i]-returns[i], 2), math.Pow(vc-returns[i], 2)
		if u >= w {
			wantLoss += c.VFCoef * 0.5 * u / n
			wantGradV[i] = c.VFCoef * (values[i] - returns[i]) / n
		} else {
			wantLoss += c.VFCoef * 0.5 * w / n
			if math.Abs(values[i]-valuesOld[i]) < 0.2 {
				wantGradV[i] = c.VFCoef * (vc - returns[i]) / n
			}
		}
		if math.Abs(values[i]-valuesOld[i]) > 0.2 {
			vclipped++
		}
	}
	s := rt.NewScope()
	defer s.Close()
	t32 := func(x []float64) torch.Tensor {
		f := make([]float32, len(x))
		for i, v := range x {
			f[i] = float32(v)
		}
		return s.FromData(f, torch.Float32, []int64{2, 3}, torch.CPU)
	}
	lp, v := t32(logp), t32(values)
	s.SetRequiresGrad(lp, true)
	s.SetRequiresGrad(v, true)
	loss, st := PPOLoss(s, c, lp, t32(logpOld), t32(adv), v, t32(valuesOld), t32(returns), t32(mask))
	got := s.Item(loss)
	s.Backward(loss)
	gp, gv := s.Float32s(s.Grad(lp)), s.Float32s(s.Grad(v))
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if math.Abs(got-wantLoss) > 1e-5 {
		t.Fatalf("PPO loss %.7f, by hand %.7f", got, wantLoss)
	}
	for i := range logp {
		if math.Abs(float64(gp[i])-wantGradP[i]) > 1e-5 || math.Abs(float64(gv[i])-wantGradV[i]) > 1e-5 {
			t.Fatalf("token %d: grads %v %v, by hand %v %v", i, gp[i], gv[i], wantGradP[i], wantGradV[i])
		}
	}
	if !near(st.ClipFrac, float64(clipped)/n) || !near(st.ValueClipFrac, float64(vclipped)/n) || clipped == 0 || vclipped == 0 {
		t.Fatalf("clip fractions %v %v, by hand %d/5 %d/5", st.ClipFrac, st.ValueClipFrac, clipped, vclipped)
	}
	var kl float64
	for i := range logp {
		lr := logp[i] - logpOld[i]
		kl += mask[i] * (math.Exp(lr) - 1 - lr) / n
	}
	if math.Abs(st.ApproxKL-kl) > 1e-6 {
		t.Fatalf("approx_kl %v, by hand %v", st.ApproxKL, kl)
	}
}
