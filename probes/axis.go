package probes

import (
	"fmt"
	"math"
	"sort"
)

// AxisResult is the Assistant Axis of a model with what the paper reports about it.
type AxisResult struct {
	Layers  int                    `json:"layers"`
	DModel  int                    `json:"d_model"`
	Middle  int                    `json:"middle_layer"` // n_layers // 2, the analysis layer
	Axis    [][]float32            `json:"-"`            // [layer][d]: mean(default) - mean(roles)
	Default [][]float32            `json:"-"`            // [layer][d]: the default Assistant's mean
	Roles   map[string][][]float32 `json:"-"`            // role -> [layer][d], roles with enough score-3 rollouts
	AvgNorm []float64              `json:"avg_norm"`     // mean residual norm per layer over the default rollouts
	// PC1AxisCosine[l] is cosine(PC1 of the centred role vectors, axis) at layer l, PC1's sign chosen to make it
	// non-negative (a principal component has no sign of its own).
	PC1AxisCosine     []float64   `json:"pc1_axis_cosine"`
	ExplainedVariance [][]float64 `json:"explained_variance"` // per layer, the top components' shares
	ComponentsFor70   []int       `json:"components_for_70pct"`
	// Loadings are the roles' PC1 scores at the middle layer, Assistant side (the axis's sign) positive, highest
	// first.
	Loadings []RoleLoading        `json:"loadings"`
	Skipped  []string             `json:"skipped_roles,omitempty"` // too few score-3 rollouts
	Counts   map[string]RoleCount `json:"counts"`
}

// RoleLoading is a role's position on PC1.
type RoleLoading struct {
	Role    string  `json:"role"`
	Kind    string  `json:"kind"`
	Loading float64 `json:"loading"`
}

// RoleCount is how many of a role's rollouts were in role.
type RoleCount struct {
	Rollouts int `json:"rollouts"`
	Score3   int `json:"score3"`
}

// ComputeAxis builds role vectors (score-3 rollouts only, at least minCount), the default vector (every default
// rollout), the axis and the PCA from extracted activations; acts[0] is the default Assistant.
func ComputeAxis(p *Personas, acts []*RoleActivations, minCount int) (*AxisResult, error) {
	if len(acts) < 3 {
		return nil, fmt.Errorf("need the default Assistant and at least two roles, have %d sets", len(acts))
	}
	res := &AxisResult{Roles: map[string][][]float32{}, Counts: map[string]RoleCount{}}
	mean := func(ra *RoleActivations, keep func(Rollout) bool) ([][]float32, int) {
		var sum [][]float64
		n := 0
		for i, r := range ra.Rollouts {
			if ra.Means[i] == nil || !keep(r) {
				continue
			}
			if sum == nil {
				sum = make([][]float64, len(ra.Means[i]))
				for l := range sum {
					sum[l] = make([]float64, len(ra.Means[i][l]))
				}
			}
			for l, v := range ra.Means[i] {
				for d, x := range v {
					sum[l][d] += float64(x)
				}
			}
			n++
		}
		if n == 0 {
			return nil, 0
		}
		out := make([][]float32, len(sum))
		for l := range sum {
			out[l] = make([]float32, len(sum[l]))
			for d := range sum[l] {
				out[l][d] = float32(sum[l][d] / float64(n))
			}
		}
		return out, n
	}
	def, n := mean(acts[0], func(Rollout) bool { return true })
	if n == 0 {
		return nil, fmt.Errorf("the default Assistant has no rollouts with content tokens")
	}
	res.Default, res.Layers, res.DModel = def, len(def), len(def[0])
	res.Middle = res.Layers / 2
	res.AvgNorm = make([]float64, res.Layers)
	for _, nv := range acts[0].Norms {
		if nv == nil {
			continue
		}
		for l := range res.AvgNorm {
			res.AvgNorm[l] += float64(nv[l]) / float64(n)
		}
	}
	var names []string
	for _, ra := range acts[1:] {
		v, k := mean(ra, func(r Rollout) bool { return r.Score == 3 })
		res.Counts[ra.Role] = RoleCount{Rollouts: len(ra.Rollouts), Score3: k}
		if k < minCount {
			res.Skipped = append(res.Skipped, ra.Role)
			continue
		}
		res.Roles[ra.Role] = v
		names = append(names, ra.Role)
	}
	if len(names) < 2 {
		return nil, fmt.Errorf("only %d roles have %d or more score-3 rollouts: lower --min-count or raise --questions", len(names), minCount)
	}
	sort.Strings(names)
	L, D, R := res.Layers, res.DModel, len(names)
	res.Axis = make([][]float32, L)
	res.PC1AxisCosine = make([]float64, L)
	res.ExplainedVariance = make([][]float64, L)
	res.ComponentsFor70 = make([]int, L)
	for l := 0; l < L; l++ {
		centre := make([]float64, D)
		for _, r := range names {
			for d, x := range res.Roles[r][l] {
				centre[d] += float64(x) / float64(R)
			}
		}
		axis := make([]float32, D)
		for d := range axis {
			axis[d] = float32(float64(def[l][d]) - centre[d])
		}
		res.Axis[l] = axis
		X := make([][]float64, R)
		for i, r := range names {
			X[i] = make([]float64, D)
			for d, x := range res.Roles[r][l] {
				X[i][d] = float64(x) - centre[d]
			}
		}
		pcs, shares := pca(X, 5)
		res.ExplainedVariance[l] = shares
		res.ComponentsFor70[l] = componentsFor(X, 0.7)
		pc1 := pcs[0]
		c := cosine64(pc1, axis)
		if c < 0 {
			c = -c
			for d := range pc1 {
				pc1[d] = -pc1[d]
			}
		}
		res.PC1AxisCosine[l] = c
		if l == res.Middle {
			for i, r := range names {
				role, _ := p.Role(r)
				var load float64
				for d := range pc1 {
					load += X[i][d] * pc1[d]
				}
				res.Loadings = append(res.Loadings, RoleLoading{Role: r, Kind: role.Kind, Loading: load})
			}
			sort.Slice(res.Loadings, func(a, b int) bool { return res.Loadings[a].Loading > res.Loadings[b].Loading })
		}
	}
	return res, nil
}

// KindLoadings is the mean PC1 loading of each kind of role (assistant, human, theatrical).
func (r *AxisResult) KindLoadings() map[string]float64 {
	sum, n := map[string]float64{}, map[string]int{}
	for _, l := range r.Loadings {
		sum[l.Kind] += l.Loading
		n[l.Kind]++
	}
	for k := range sum {
		sum[k] /= float64(n[k])
	}
	return sum
}

func cosine64(a []float64, b []float32) float64 {
	var dot, na, nb float64
	for i := range a {
		dot += a[i] * float64(b[i])
		na += a[i] * a[i]
		nb += float64(b[i]) * float64(b[i])
	}
	if na == 0 || nb == 0 {
		return 0
	}
	return dot / math.Sqrt(na*nb)
}

// pca returns the top k principal directions (unit, in the D-dimensional space) of the rows of X (already
// centred) and every component's share of the variance, top k. With R rows << D it diagonalises the R x R Gram
// matrix X X^T, whose eigenvectors e give the directions X^T e / sqrt(lambda).
func pca(X [][]float64, k int) ([][]float64, []float64) {
	R, D := len(X), len(X[0])
	G := make([][]float64, R)
	for i := range G {
		G[i] = make([]float64, R)
		for j := 0; j <= i; j++ {
			var s float64
			for d := 0; d < D; d++ {
				s += X[i][d] * X[j][d]
			}
			G[i][j], G[j][i] = s, s
		}
	}
	vals, vecs := jacobiEigen(G)
	var total float64
	for _, v := range vals {
		total += math.Max(v, 0)
	}
	k = min(k, R)
	dirs := make([][]float64, k)
	shares := make([]float64, k)
	for c := 0; c < k; c++ {
		dirs[c] = make([]float64, D)
		lam := math.Max(vals[c], 0)
		if total > 0 {
			shares[c] = lam / total
		}
		if lam == 0 {
			continue
		}
		for i := 0; i < R; i++ {
			for d := 0; d < D; d++ {
				dirs[c][d] += X[i][d] * vecs[i][c]
			}
		}
		s := 1 / math.Sqrt(lam)
		for d := range dirs[c] {
			dirs[c][d] *= s
		}
	}
	return dirs, shares
}

// componentsFor is how many components hold the given share of the variance.
func componentsFor(X [][]float64, share float64) int {
	_, all := pca(X, len(X))
	var acc float64
	for i, s := range all {
		acc += s
		if acc >= share-1e-12 {
			return i + 1
		}
	}
	return len(all)
}

// jacobiEigen diagonalises a symmetric matrix by cyclic Jacobi rotations: eigenvalues descending, eigenvectors
// as the columns of vecs.
func jacobiEigen(A [][]float64) ([]float64, [][]float64) {
	n := len(A)
	a := make([][]float64, n)
	v := make([][]float64, n)
	for i := range a {
		a[i] = append([]float64(nil), A[i]...)
		v[i] = make([]float64, n)
		v[i][i] = 1
	}
	for sweep := 0; sweep < 100; sweep++ {
		var off float64
		for i := 0; i < n; i++ {
			for j := i + 1; j < n; j++ {
				off += a[i][j] * a[i][j]
			}
		}
		if off < 1e-22 {
			break
		}
		for p := 0; p < n; p++ {
			for q := p + 1; q < n; q++ {
				if math.Abs(a[p][q]) < 1e-300 {
					continue
				}
				theta := (a[q][q] - a[p][p]) / (2 * a[p][q])
				t := math.Copysign(1, theta) / (math.Abs(theta) + math.Sqrt(theta*theta+1))
				c := 1 / math.Sqrt(t*t+1)
				s := t * c
				for k := 0; k < n; k++ {
					akp, akq := a[k][p], a[k][q]
					a[k][p], a[k][q] = c*akp-s*akq, s*akp+c*akq
				}
				for k := 0; k < n; k++ {
					apk, aqk := a[p][k], a[q][k]
					a[p][k], a[q][k] = c*apk-s*aqk, s*apk+c*aqk
				}
				for k := 0; k < n; k++ {
					vkp, vkq := v[k][p], v[k][q]
					v[k][p], v[k][q] = c*vkp-s*vkq, s*vkp+c*vkq
				}
			}
		}
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(x, y int) bool { return a[idx[x]][idx[x]] > a[idx[y]][idx[y]] })
	vals := make([]float64, n)
	vecs := make([][]float64, n)
	for i := range vecs {
		vecs[i] = make([]float64, n)
	}
	for c, j := range idx {
		vals[c] = a[j][j]
		for i := 0; i < n; i++ {
			vecs[i][c] = v[i][j]
		}
	}
	return vals, vecs
}
