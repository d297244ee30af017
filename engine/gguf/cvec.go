package gguf

import (
	"fmt"
	"sort"
	"strconv"
)

// ExportControlVector writes directions as a llama.cpp control vector (--control-vector): general.architecture
// "controlvector", controlvector.model_hint, and one direction.N tensor per layer, scaled.
//
// Layer mapping: llama.cpp adds direction.N to the output of its 0-indexed decoder layer N (its first usable N
// is 1), which is keel's hook site "output of decoder layer N". So keel's layer i is direction.i, and a
// direction for layer 0 cannot be expressed (it is refused).
func ExportControlVector(out, modelHint string, directions map[int][]float32, scale float64) error {
	if len(directions) == 0 {
		return fmt.Errorf("export control vector: no layers")
	}
	layers := make([]int, 0, len(directions))
	for l := range directions {
		layers = append(layers, l)
	}
	sort.Ints(layers)
	if layers[0] < 1 {
		return fmt.Errorf("export control vector: layer 0 has no llama.cpp control-vector slot (llama.cpp applies direction.N after layer N for N >= 1)")
	}
	var tensors []Tensor
	dim := len(directions[layers[0]])
	for _, l := range layers {
		v := directions[l]
		if len(v) != dim {
			return fmt.Errorf("export control vector: layer %d has %d values, layer %d has %d", l, len(v), layers[0], dim)
		}
		scaled := make([]float32, len(v))
		for i, x := range v {
			scaled[i] = float32(float64(x) * scale)
		}
		tensors = append(tensors, Tensor{Name: "direction." + strconv.Itoa(l), Shape: []int64{int64(dim)}, Type: GGMLF32, Data: encode(scaled, GGMLF32)})
	}
	kvs := []KV{
		{"general.architecture", "controlvector"},
		{"controlvector.model_hint", modelHint},
		{"controlvector.layer_count", uint32(len(layers))},
	}
	return Write(out, kvs, tensors)
}

// ArchName is llama.cpp's name for a keel architecture ("" when it has none).
func ArchName(arch string) string { return archNames[arch] }
