package model

import "math"

// invFreq computes the rotary inverse frequencies in float32 as Hugging Face does, with rope_scaling applied.
func invFreq(c *Config) []float32 {
	half := c.HeadDim / 2
	inv := make([]float32, half)
	for i := range inv {
		exp := float32(2*i) / float32(c.HeadDim)
		inv[i] = float32(1 / math.Pow(c.RopeTheta, float64(exp)))
	}
	r := c.RopeScaling
	switch r.Kind() {
	case "linear":
		for i := range inv {
			inv[i] /= float32(r.Factor)
		}
	case "llama3":
		old := float64(r.OriginalMaxPositionEmbeddings)
		lowWavelen := old / r.LowFreqFactor
		highWavelen := old / r.HighFreqFactor
		for i, f := range inv {
			wavelen := 2 * math.Pi / float64(f)
			scaled := f
			if wavelen > lowWavelen {
				scaled = f / float32(r.Factor)
			}
			if !(wavelen < highWavelen) && !(wavelen > lowWavelen) {
				smooth := float32((old/wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor))
				scaled = (1-smooth)*scaled/float32(r.Factor) + smooth*scaled
			}
			inv[i] = scaled
		}
	}
	return inv
}

// ropeTables returns cos and sin, [n, head_dim] row-major, for positions 0..n-1 (the two halves repeat, as in
// Hugging Face's rotate_half convention).
func ropeTables(inv []float32, n int) (cos, sin []float32) {
	d := 2 * len(inv)
	cos = make([]float32, n*d)
	sin = make([]float32, n*d)
	for p := 0; p < n; p++ {
		for i, f := range inv {
			a := float64(float32(p) * f)
			c, s := float32(math.Cos(a)), float32(math.Sin(a))
			cos[p*d+i], cos[p*d+i+len(inv)] = c, c
			sin[p*d+i], sin[p*d+i+len(inv)] = s, s
		}
	}
	return cos, sin
}

// ropeTable is one RoPE's inverse frequencies and its cos/sin tables, grown as positions need.
type ropeTable struct {
	inv      []float32
	cos, sin Tensor
	n        int
}

// newRopes gives every layer's RoPE, then the sliding layers' own where the architecture has one.
func newRopes(c *Config, s Spec) []*ropeTable {
	r := []*ropeTable{{inv: invFreq(c)}}
	if s.LocalRopeTheta > 0 {
		r = append(r, &ropeTable{inv: invFreq(&Config{HeadDim: c.HeadDim, RopeTheta: s.LocalRopeTheta})})
	}
	return r
}
