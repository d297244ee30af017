package probes

import (
	"fmt"
	"math"
	"sort"
	"strconv"

	"github.com/keel-lab/keel/steer"
)

// CalibrationPercentiles are the role-ward percentiles the paper reports and caps at.
var CalibrationPercentiles = []float64{0.01, 0.25, 0.5, 0.75}

// Calibration is the distribution of per-rollout mean projections on the axis, per layer, over every role and
// default rollout (no score filter), in the paper's role-ward orientation: role-ward = -<mean, unit axis>.
type Calibration struct {
	Rollouts int                  `json:"rollouts"`
	RoleWard []map[string]float64 `json:"role_ward_percentiles"` // per layer: "p1", "p25", "p50", "p75"
	proj     [][]float64          // per layer, sorted role-ward projections
}

// Calibrate projects every rollout's mean activation onto the axis at each layer.
func Calibrate(axis *steer.VectorFile, acts []*RoleActivations) (*Calibration, error) {
	c := &Calibration{proj: make([][]float64, axis.NLayers)}
	for _, ra := range acts {
		for _, m := range ra.Means {
			if m == nil {
				continue
			}
			if len(m) != axis.NLayers {
				return nil, fmt.Errorf("activations of %s have %d layers, the axis %d: they come from another model", ra.Role, len(m), axis.NLayers)
			}
			c.Rollouts++
			for l := range c.proj {
				if u, ok := axis.Layers[l]; ok {
					c.proj[l] = append(c.proj[l], -steer.Dot(m[l], u))
				}
			}
		}
	}
	if c.Rollouts == 0 {
		return nil, fmt.Errorf("no rollouts to calibrate on")
	}
	c.RoleWard = make([]map[string]float64, axis.NLayers)
	for l := range c.proj {
		sort.Float64s(c.proj[l])
		c.RoleWard[l] = map[string]float64{}
		for _, p := range CalibrationPercentiles {
			c.RoleWard[l][PercentileName(p)] = c.Percentile(l, p)
		}
	}
	return c, nil
}

// PercentileName is "p25" for 0.25.
func PercentileName(p float64) string { return "p" + strconv.FormatFloat(p*100, 'f', -1, 64) }

// Percentile is the role-ward p-quantile at a layer, interpolated linearly between order statistics.
func (c *Calibration) Percentile(layer int, p float64) float64 {
	xs := c.proj[layer]
	if len(xs) == 0 {
		return math.NaN()
	}
	pos := p * float64(len(xs)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(xs)-1)
	return xs[lo] + (pos-float64(lo))*(xs[hi]-xs[lo])
}

// Tau is keel's cap threshold for a role-ward percentile: a floor on the +axis projection at -(role-ward
// quantile), the paper's "p25" sitting near the mean Assistant response.
// The sign convention lives here and only here: the calibration stores role-ward values, a cap floors the
// +axis projection at their negation.
func (c *Calibration) Tau(layer int, p float64) float64 {
	v, ok := c.tau(layer, p)
	if !ok {
		return math.NaN()
	}
	return v
}

// tau reads the threshold from the rollouts when the calibration was computed here, else from the percentiles
// the file lists.
func (c *Calibration) tau(layer int, p float64) (float64, bool) {
	if layer < len(c.proj) && len(c.proj[layer]) > 0 {
		return -c.Percentile(layer, p), true
	}
	if layer < 0 || layer >= len(c.RoleWard) {
		return 0, false
	}
	v, ok := c.RoleWard[layer][PercentileName(p)]
	return -v, ok
}

// CapID is AA's name of a capping config: a Python slice of layers and the percentile.
func CapID(start, end int, p float64) string {
	return fmt.Sprintf("layers_%d:%d-p%s", start, end, strconv.FormatFloat(p, 'f', -1, 64))
}

// CapWindows are the layer windows calibrate writes configs for: widths of a quarter and half of the model
// (at least 2 layers: the paper finds one layer is not enough), each sliding by half its width.
func CapWindows(nLayers int) [][2]int {
	var out [][2]int
	seen := map[int]bool{}
	for _, w := range []int{max(2, nLayers/4), max(2, nLayers/2)} {
		if w > nLayers || seen[w] {
			continue
		}
		seen[w] = true
		step := max(1, w/2)
		for s := 0; s+w <= nLayers; s += step {
			out = append(out, [2]int{s, s + w})
		}
	}
	return out
}

// SweepWindows are the windows `keel eval capping` tries: a quarter of the layers stepping by its width, and
// half of them stepping by a quarter (7 windows on 8 layers).
func SweepWindows(nLayers int) [][2]int {
	q := max(1, nLayers/4)
	var out [][2]int
	for s := 0; s+q <= nLayers; s += q {
		out = append(out, [2]int{s, s + q})
	}
	if h := 2 * q; h <= nLayers && h > q {
		for s := 0; s+h <= nLayers; s += q {
			out = append(out, [2]int{s, s + h})
		}
	}
	return out
}

// CapAxis is the cap file for one window and percentile: the axis's unit vectors on the window's layers with
// their thresholds.
func (c *Calibration) CapAxis(axis *steer.VectorFile, window [2]int, p float64) (*steer.VectorFile, error) {
	h := axis.Header
	h.Operation, h.Percentile, h.ID = steer.OpCap, p, CapID(window[0], window[1], p)
	h.Tau = map[int]float64{}
	raw := map[int][]float32{}
	for l := window[0]; l < window[1]; l++ {
		u, ok := axis.Layers[l]
		if !ok {
			return nil, fmt.Errorf("the axis has no vector at layer %d", l)
		}
		tau, ok := c.tau(l, p)
		if !ok {
			return nil, fmt.Errorf("the calibration has no percentile %s at layer %d", PercentileName(p), l)
		}
		raw[l], h.Tau[l] = u, tau
	}
	return steer.NewVectorFile(h, raw, axis.NLayers)
}
