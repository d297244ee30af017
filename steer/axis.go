package steer

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/safetensors"
)

// Axis is a direction per layer (the Assistant Axis, or any other) for one model, unit-normalised.
type Axis struct {
	Model  string            // the model it was extracted from
	Layers map[int][]float32 // layer -> unit vector
	Meta   map[string]string
}

// LayerList is the axis's layers, ascending.
func (a *Axis) LayerList() []int {
	var ls []int
	for l := range a.Layers {
		ls = append(ls, l)
	}
	sort.Ints(ls)
	return ls
}

// Normalize scales every layer's vector to unit length.
func (a *Axis) Normalize() error {
	for l, v := range a.Layers {
		var n float64
		for _, x := range v {
			n += float64(x) * float64(x)
		}
		if n == 0 || math.IsNaN(n) {
			return fmt.Errorf("axis layer %d has zero length", l)
		}
		n = math.Sqrt(n)
		for i := range v {
			v[i] = float32(float64(v[i]) / n)
		}
	}
	return nil
}

// SaveAxis writes an axis as safetensors: one F32 tensor "axis.layer_N" per layer, model and metadata in the
// header.
func SaveAxis(path string, a *Axis) error {
	var ts []safetensors.Tensor
	for _, l := range a.LayerList() {
		v := a.Layers[l]
		b := make([]byte, 4*len(v))
		for i, x := range v {
			u := math.Float32bits(x)
			b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
		}
		ts = append(ts, safetensors.Tensor{Name: "axis.layer_" + strconv.Itoa(l), DType: "F32", Shape: []int64{int64(len(v))}, Data: b})
	}
	meta := map[string]string{"format": "keel-axis", "model": a.Model}
	for k, v := range a.Meta {
		meta[k] = v
	}
	return safetensors.Write(path, ts, meta)
}

// LoadAxis reads an axis file written by SaveAxis.
func LoadAxis(path string) (*Axis, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a := &Axis{Model: f.Header.Metadata["model"], Layers: map[int][]float32{}, Meta: f.Header.Metadata}
	for _, name := range f.Names() {
		rest, ok := strings.CutPrefix(name, "axis.layer_")
		if !ok {
			continue
		}
		l, err := strconv.Atoi(rest)
		if err != nil || l < 0 {
			return nil, fmt.Errorf("%s: tensor %q: want axis.layer_N", path, name)
		}
		data, info, _ := f.Data(name)
		if info.DType != "F32" || len(info.Shape) != 1 {
			return nil, fmt.Errorf("%s: tensor %q must be a 1-d F32 vector", path, name)
		}
		v := make([]float32, info.Shape[0])
		for i := range v {
			v[i] = math.Float32frombits(uint32(data[4*i]) | uint32(data[4*i+1])<<8 | uint32(data[4*i+2])<<16 | uint32(data[4*i+3])<<24)
		}
		a.Layers[l] = v
	}
	if len(a.Layers) == 0 {
		return nil, fmt.Errorf("%s: no axis.layer_N tensors: not a keel axis file", path)
	}
	return a, a.Normalize()
}

// FileSHA256 is the hex sha256 of a file's bytes.
func FileSHA256(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:]), nil
}
