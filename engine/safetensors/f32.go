package safetensors

import (
	"encoding/binary"
	"math"
)

// F32Bytes is xs as an F32 tensor's little-endian bytes.
func F32Bytes(xs []float32) []byte {
	b := make([]byte, 4*len(xs))
	for i, x := range xs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// F32s reads little-endian F32 bytes (a trailing partial value is ignored).
func F32s(b []byte) []float32 {
	xs := make([]float32, len(b)/4)
	for i := range xs {
		xs[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return xs
}
