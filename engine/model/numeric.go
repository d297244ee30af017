package model

import "math"

// bf16Round rounds a float32 to the nearest bfloat16 (ties to even), as a float32.
func bf16Round(f float32) float32 {
	b := math.Float32bits(f)
	if f != f {
		return f
	}
	b += 0x7fff + (b>>16)&1
	return math.Float32frombits(b &^ 0xffff)
}

// f16Round rounds a float32 to the nearest IEEE half (ties to even), as a float32.
func f16Round(f float32) float32 {
	if f == 0 || f != f || math.IsInf(float64(f), 0) {
		return f
	}
	exp := math.Floor(math.Log2(math.Abs(float64(f))))
	if exp < -14 {
		exp = -14
	}
	q := math.Ldexp(1, int(exp)-10)
	return float32(math.RoundToEven(float64(f)/q) * q)
}
