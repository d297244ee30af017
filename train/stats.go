package train

import "math"

// MeanStd is the mean and the sample standard deviation of xs (0 for fewer than two).
func MeanStd(xs []float64) (float64, float64) {
	m := Mean(xs)
	if len(xs) < 2 {
		return m, 0
	}
	var ss float64
	for _, x := range xs {
		ss += (x - m) * (x - m)
	}
	return m, math.Sqrt(ss / float64(len(xs)-1))
}
