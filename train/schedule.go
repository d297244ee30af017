package train

import "math"

// learningRate is the schedule at a 1-based step: linear warmup, then cosine (or linear) decay to zero, or
// constant.
func learningRate(kind string, peak float64, warmup, total, step int) float64 {
	if warmup > 0 && step <= warmup {
		return peak * float64(step) / float64(warmup)
	}
	if total <= warmup {
		return peak
	}
	progress := float64(step-warmup) / float64(total-warmup)
	switch kind {
	case "constant":
		return peak
	case "linear":
		return peak * math.Max(0, 1-progress)
	}
	return peak * 0.5 * (1 + math.Cos(math.Pi*math.Min(1, progress)))
}
