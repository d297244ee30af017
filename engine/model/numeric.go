package model

import (
	"math"

	"github.com/keel-lab/keel/engine/torch"
)

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

// half returns the 16-bit pattern of x (already representable) in bf16 or f16.
func half(x float32, dt torch.DType) uint16 {
	b := math.Float32bits(bf16Round(x))
	if dt == torch.BFloat16 {
		return uint16(b >> 16)
	}
	return f16Bits(x)
}

// f16Bits encodes a float32 as IEEE half (round to nearest even).
func f16Bits(x float32) uint16 {
	b := math.Float32bits(x)
	sign := uint16(b>>16) & 0x8000
	if x != x {
		return sign | 0x7e00
	}
	a := math.Abs(float64(x))
	switch {
	case a >= 65520:
		return sign | 0x7c00
	case a < math.Ldexp(1, -25):
		return sign
	case a < math.Ldexp(1, -14): // subnormal
		return sign | uint16(math.RoundToEven(a/math.Ldexp(1, -24)))
	}
	e := math.Floor(math.Log2(a))
	m := math.RoundToEven((a/math.Ldexp(1, int(e)) - 1) * 1024)
	if m == 1024 {
		m, e = 0, e+1
	}
	return sign | uint16(int(e)+15)<<10 | uint16(m)
}
