package probes

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/keel-lab/keel/steer"
)

func TestJacobiEigenDiagonalises(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	n := 7
	A := make([][]float64, n)
	for i := range A {
		A[i] = make([]float64, n)
	}
	for i := 0; i < n; i++ {
		for j := 0; j <= i; j++ {
			A[i][j] = rng.NormFloat64()
			A[j][i] = A[i][j]
		}
	}
	vals, vecs := jacobiEigen(A)
	for c := 0; c < n; c++ {
		if c > 0 && vals[c] > vals[c-1] {
			t.Fatalf("eigenvalues not descending: %v", vals)
		}
		for i := 0; i < n; i++ { // (A v)_i = lambda v_i
			var av float64
			for j := 0; j < n; j++ {
				av += A[i][j] * vecs[j][c]
			}
			if math.Abs(av-vals[c]*vecs[i][c]) > 1e-9 {
				t.Fatalf("eigenpair %d: (Av)_%d = %v, lambda v = %v", c, i, av, vals[c]*vecs[i][c])
			}
		}
	}
}

// syntheticActivations places the default Assistant at +3u, assistant-like roles at +1u, human ones at -1u
// and theatrical ones at -3u along a hidden direction u (plus role-specific noise), and returns u per layer.
func syntheticActivations(t *testing.T, p *Personas, layers, d int) ([]*RoleActivations, [][]float64) {
	rng := rand.New(rand.NewPCG(7, 8))
	u := make([][]float64, layers)
	for l := range u {
		u[l] = make([]float64, d)
		var n float64
		for i := range u[l] {
			u[l][i] = rng.NormFloat64()
			n += u[l][i] * u[l][i]
		}
		for i := range u[l] {
			u[l][i] /= math.Sqrt(n)
		}
	}
	where := map[string]float64{"assistant": 1, "human": -1, "theatrical": -3}
	rollouts := func(name string, at float64, score int) *RoleActivations {
		ra := &RoleActivations{Role: name}
		offset := make([][]float64, layers) // the role's own direction, orthogonal-ish noise
		for l := range offset {
			offset[l] = make([]float64, d)
			for i := range offset[l] {
				offset[l][i] = 0.15 * rng.NormFloat64()
			}
		}
		for k := 0; k < 6; k++ {
			m := make([][]float32, layers)
			norms := make([]float32, layers)
			for l := range m {
				m[l] = make([]float32, d)
				for i := range m[l] {
					m[l][i] = float32(at*u[l][i] + offset[l][i] + 0.05*rng.NormFloat64() + 10) // a shared offset PCA must centre away
				}
				norms[l] = float32(10 + l)
			}
			ra.Rollouts = append(ra.Rollouts, Rollout{Role: name, Score: score, Tokens: 5})
			ra.Means = append(ra.Means, m)
			ra.Norms = append(ra.Norms, norms)
		}
		// One rollout out of role: it must not count toward the role's vector.
		ra.Rollouts = append(ra.Rollouts, Rollout{Role: name, Score: 1, Tokens: 5})
		ra.Means = append(ra.Means, ra.Means[0])
		ra.Norms = append(ra.Norms, ra.Norms[0])
		return ra
	}
	acts := []*RoleActivations{rollouts(p.Assistant.Name, 3, -1)}
	for _, r := range p.Roles {
		acts = append(acts, rollouts(r.Name, where[r.Kind], 3))
	}
	return acts, u
}

func TestComputeAxisRecoversAPlantedDirection(t *testing.T) {
	p := mustPersonas(t)
	acts, u := syntheticActivations(t, p, 3, 24)
	res, err := ComputeAxis(p, acts, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Roles) != len(p.Roles) || len(res.Skipped) != 0 || res.Middle != 1 {
		t.Fatalf("%d roles, skipped %v, middle %d", len(res.Roles), res.Skipped, res.Middle)
	}
	for l := 0; l < 3; l++ {
		if c := cosine64(u[l], res.Axis[l]); c < 0.95 {
			t.Errorf("layer %d: cos(axis, planted direction) %.3f", l, c)
		}
		if res.PC1AxisCosine[l] < 0.9 || res.ExplainedVariance[l][0] < 0.5 || res.ComponentsFor70[l] != 1 {
			t.Errorf("layer %d: cos(PC1, axis) %.3f, PC1 share %.2f, %d PCs for 70%%", l, res.PC1AxisCosine[l], res.ExplainedVariance[l][0], res.ComponentsFor70[l])
		}
		if math.Abs(res.AvgNorm[l]-float64(10+l)) > 1e-6 {
			t.Errorf("layer %d average norm %v", l, res.AvgNorm[l])
		}
	}
	k := res.KindLoadings()
	if !(k["assistant"] > k["human"] && k["human"] > k["theatrical"]) {
		t.Fatalf("kind loadings %v: want assistant > human > theatrical", k)
	}
	if res.Loadings[0].Kind != "assistant" || res.Loadings[len(res.Loadings)-1].Kind != "theatrical" {
		t.Fatalf("PC1 ends: %v ... %v", res.Loadings[0], res.Loadings[len(res.Loadings)-1])
	}
	// Too few score-3 rollouts: the role is left out, and with fewer than two roles there is no axis.
	if _, err := ComputeAxis(p, acts[:3], 7); err == nil {
		t.Fatal("an axis from roles with too few score-3 rollouts")
	}
}

func TestCalibrationPercentilesAndCaps(t *testing.T) {
	p := mustPersonas(t)
	acts, _ := syntheticActivations(t, p, 4, 12)
	res, err := ComputeAxis(p, acts, 5)
	if err != nil {
		t.Fatal(err)
	}
	raw := map[int][]float32{}
	for l, v := range res.Axis {
		raw[l] = v
	}
	axis, err := steer.NewVectorFile(steer.Header{Model: "synthetic"}, raw, 4)
	if err != nil {
		t.Fatal(err)
	}
	cal, err := Calibrate(axis, acts)
	if err != nil {
		t.Fatal(err)
	}
	if cal.Rollouts != len(acts)*7 {
		t.Fatalf("%d rollouts calibrated, want every one (no score filter): %d", cal.Rollouts, len(acts)*7)
	}
	for l := 0; l < 4; l++ {
		// By hand: the +axis projections, sorted; role-ward p25 is minus their 75th percentile.
		var plus []float64
		for _, ra := range acts {
			for _, m := range ra.Means {
				plus = append(plus, steer.Dot(m[l], axis.Layers[l]))
			}
		}
		slices.Sort(plus)
		pos := 0.75 * float64(len(plus)-1)
		lo := int(pos)
		want := plus[lo] + (pos-float64(lo))*(plus[lo+1]-plus[lo])
		if got := cal.Tau(l, 0.25); math.Abs(got-want) > 1e-9 {
			t.Fatalf("layer %d: tau at p25 %v, by hand %v", l, got, want)
		}
		rw := cal.RoleWard[l]
		if !(rw["p1"] <= rw["p25"] && rw["p25"] <= rw["p50"] && rw["p50"] <= rw["p75"]) {
			t.Fatalf("layer %d percentiles out of order: %v", l, rw)
		}
	}
	c, err := cal.CapAxis(axis, [2]int{1, 3}, 0.25)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "layers_1:3-p0.25" || c.Operation != steer.OpCap || len(c.Caps()) != 2 || c.Tau[1] != cal.Tau(1, 0.25) {
		t.Fatalf("cap file %+v", c.Header)
	}
	if got := CapWindows(8); !slices.Equal(got, [][2]int{{0, 2}, {1, 3}, {2, 4}, {3, 5}, {4, 6}, {5, 7}, {6, 8}, {0, 4}, {2, 6}, {4, 8}}) {
		t.Fatalf("windows for 8 layers: %v", got)
	}
	if got := SweepWindows(8); !slices.Equal(got, [][2]int{{0, 2}, {2, 4}, {4, 6}, {6, 8}, {0, 4}, {2, 6}, {4, 8}}) {
		t.Fatalf("sweep windows for 8 layers: %v", got)
	}
	if id := CapID(46, 54, 0.25); id != "layers_46:54-p0.25" {
		t.Fatalf("id %s", id)
	}
}
