package steer

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
)

// Format names keel's vector files in their header.
const Format = "keel-vectors/1"

// HookSite is where every vector in keel is read and applied.
const HookSite = "output of decoder layer i, 0-indexed (Hugging Face model.model.layers[i])"

// SignAssistant is the sign convention of keel's axes: positive projections are Assistant-like.
const SignAssistant = "+assistant: axis = mean(default) - mean(roles)"

// Operations a vector file is made for.
const (
	OpProject = "project" // read <h, v/|v|>
	OpAdd     = "add"     // h += coeff * v
	OpCap     = "cap"     // floor on <h, v/|v|> at tau, per layer
)

// Header is what a vector file says about itself, so that a vector never meets the wrong model, layer numbering
// or sign in silence.
type Header struct {
	Format             string          `json:"format"`
	Model              string          `json:"model"`
	WeightsFingerprint string          `json:"weights_fingerprint,omitempty"`
	DModel             int             `json:"d_model"`
	NLayers            int             `json:"n_layers"`
	HookSite           string          `json:"hook_site"`
	Sign               string          `json:"sign"`
	Operation          string          `json:"operation"`
	ID                 string          `json:"id,omitempty"`         // caps: AA's config id, "layers_A:B-pP"
	Percentile         float64         `json:"percentile,omitempty"` // caps: role-ward percentile (0.25 is "p25")
	Tau                map[int]float64 `json:"tau,omitempty"`        // caps: floor on the unit +axis projection per layer
	AvgNorm            map[int]float64 `json:"avg_norm,omitempty"`   // mean residual norm per layer, for steering strength
	Source             string          `json:"source,omitempty"`
}

// VectorFile is a keel vector file: a direction per layer for one model with its header, whether it is an
// Assistant Axis, a default or role vector, or a cap file (Header.Operation says which). Raw holds the vectors as
// stored (an extracted axis is a difference of means, not normalised); Layers holds them at unit length, for
// projection and capping.
type VectorFile struct {
	Header
	Raw    map[int][]float32
	Layers map[int][]float32
}

// NewVectorFile makes a vector file from raw vectors; the header's shape fields are filled in from them and nLayers.
func NewVectorFile(h Header, raw map[int][]float32, nLayers int) (*VectorFile, error) {
	a := &VectorFile{Header: h, Raw: raw}
	a.Format, a.NLayers = Format, nLayers
	if a.HookSite == "" {
		a.HookSite = HookSite
	}
	if a.Sign == "" {
		a.Sign = SignAssistant
	}
	if a.Operation == "" {
		a.Operation = OpProject
	}
	for _, v := range raw {
		a.DModel = len(v)
		break
	}
	return a, a.normalize("vectors")
}

// LayerList is the axis's layers, ascending.
func (a *VectorFile) LayerList() []int {
	var ls []int
	for l := range a.Layers {
		ls = append(ls, l)
	}
	sort.Ints(ls)
	return ls
}

func (a *VectorFile) normalize(name string) error {
	a.Layers = map[int][]float32{}
	for l, v := range a.Raw {
		if len(v) != a.DModel {
			return fmt.Errorf("%s: layer %d has %d values, layer vectors must all have d_model = %d", name, l, len(v), a.DModel)
		}
		if l < 0 || (a.NLayers > 0 && l >= a.NLayers) {
			return fmt.Errorf("%s: layer %d is outside the model's %d layers", name, l, a.NLayers)
		}
		n := Norm(v)
		if n == 0 || math.IsNaN(n) || math.IsInf(n, 0) {
			return fmt.Errorf("%s: layer %d vector has length %v: it cannot give a direction", name, l, n)
		}
		u := make([]float32, len(v))
		for i, x := range v {
			u[i] = float32(float64(x) / n)
		}
		a.Layers[l] = u
	}
	return nil
}

// Norm is the Euclidean length of v.
func Norm(v []float32) float64 {
	var n float64
	for _, x := range v {
		n += float64(x) * float64(x)
	}
	return math.Sqrt(n)
}

// Dot is <a, b>.
func Dot(a, b []float32) float64 {
	var d float64
	for i := range a {
		d += float64(a[i]) * float64(b[i])
	}
	return d
}

// Project is <h, unit axis at layer>.
func (a *VectorFile) Project(layer int, h []float32) float64 { return Dot(h, a.Layers[layer]) }

// SaveVectorFile writes a vector file as safetensors: one F32 tensor "axis.layer_N" per layer (the raw vectors) and the
// header as JSON under the metadata key "keel". The write is atomic: a file already there survives a failure.
func SaveVectorFile(path string, a *VectorFile) error {
	vecs := a.Raw
	if vecs == nil {
		vecs = a.Layers
	}
	layers := make([]int, 0, len(vecs))
	for l := range vecs {
		layers = append(layers, l)
	}
	sort.Ints(layers)
	var ts []safetensors.Tensor
	for _, l := range layers {
		v := vecs[l]
		ts = append(ts, safetensors.Tensor{Name: "axis.layer_" + strconv.Itoa(l), DType: "F32", Shape: []int64{int64(len(v))}, Data: safetensors.F32Bytes(v)})
	}
	h := a.Header
	h.Format = Format
	hj, err := json.Marshal(h)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := safetensors.Write(tmp, ts, map[string]string{"keel": string(hj)}); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// LoadVectorFile reads a vector file written by SaveVectorFile, or the axis.safetensors of an extraction folder.
func LoadVectorFile(path string) (*VectorFile, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		// An extraction folder stands for its axis.
		inside := filepath.Join(path, "axis.safetensors")
		if _, err := os.Stat(inside); err != nil {
			return nil, fmt.Errorf("%s is a folder with no axis.safetensors: give a vector file, or a folder keel axis extract wrote", path)
		}
		path = inside
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hj, ok := f.Header.Metadata["keel"]
	if !ok {
		return nil, fmt.Errorf("%s: no keel header: not a keel vector file (keel axis import converts the paper's .pt files)", path)
	}
	a := &VectorFile{Raw: map[int][]float32{}}
	if err := json.Unmarshal([]byte(hj), &a.Header); err != nil {
		return nil, fmt.Errorf("%s: unreadable keel header: %v", path, err)
	}
	if a.Format != Format {
		return nil, fmt.Errorf("%s: format %q, this keel reads %q", path, a.Format, Format)
	}
	for _, name := range f.Names() {
		rest, ok := strings.CutPrefix(name, "axis.layer_")
		if !ok {
			continue
		}
		l, err := strconv.Atoi(rest)
		if err != nil || l < 0 {
			return nil, fmt.Errorf("%s: tensor %q: want axis.layer_N", path, name)
		}
		data, info, err := f.Data(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if info.DType != "F32" || len(info.Shape) != 1 {
			return nil, fmt.Errorf("%s: tensor %q must be a 1-d F32 vector", path, name)
		}
		a.Raw[l] = safetensors.F32s(data)
	}
	if len(a.Raw) == 0 {
		return nil, fmt.Errorf("%s: no axis.layer_N tensors: not a keel vector file", path)
	}
	if err := a.normalize(path); err != nil {
		return nil, err
	}
	for l := range a.Tau {
		if _, ok := a.Layers[l]; !ok {
			return nil, fmt.Errorf("%s: a cap threshold for layer %d, which has no vector", path, l)
		}
	}
	return a, nil
}

// Fit checks that a vector file belongs to a model: its shape always (a mismatch cannot be overridden), and its
// weights fingerprint unless ignoreHash. A file made on weights the model descends from (keel's trainers record
// the lineage) fits as BaseWeights: fine-tuning moves the model along the axis it started with.
func (a *VectorFile) Fit(path string, nLayers, dModel int, w Weights, ignoreHash bool) (Relation, error) {
	if a.NLayers != nLayers || a.DModel != dModel {
		return SameWeights, fmt.Errorf("%s: made for a model of %d layers x %d wide, this one is %d x %d: extract an axis for it with keel axis extract",
			path, a.NLayers, a.DModel, nLayers, dModel)
	}
	if a.WeightsFingerprint == "" || w.Fingerprint == "" || a.WeightsFingerprint == w.Fingerprint {
		return SameWeights, nil
	}
	for _, fp := range w.Ancestors {
		if fp == a.WeightsFingerprint {
			return BaseWeights, nil
		}
	}
	if ignoreHash {
		return SameWeights, nil
	}
	return SameWeights, fmt.Errorf("%s: made for weights %.12s, this model's are %.12s and descend from no weights it knows: re-extract with keel axis extract, or pass --ignore-hash if it is a fine-tune made outside keel",
		path, a.WeightsFingerprint, w.Fingerprint)
}

// Scale places the roles and the Assistant on the axis at a layer from the default vector: the Assistant's mean
// projects to <default, u> and the roles' mean |axis| below it (axis = default - roles); line is midway, the
// drift line.
func (a *VectorFile) Scale(defaultVector *VectorFile, layer int) (line, assistant float64, ok bool) {
	u, ok1 := a.Layers[layer]
	d, ok2 := defaultVector.Raw[layer]
	if !ok1 || !ok2 || len(d) != len(u) {
		return 0, 0, false
	}
	assistant = Dot(d, u)
	return assistant - Norm(a.Raw[layer])/2, assistant, true
}

// Caps turns a cap file into the engine's interventions: a floor at tau on the unit +axis projection at each
// of its layers (the paper's h <- h - v * min(<h, v> - tau, 0)).
func (a *VectorFile) Caps() []model.Intervention {
	var out []model.Intervention
	for _, l := range a.LayerList() {
		tau, ok := a.Tau[l]
		if !ok {
			continue
		}
		out = append(out, model.Intervention{Layer: l, Kind: model.Cap, Vectors: [][]float32{a.Layers[l]}, Tau: tau, Label: "cap " + a.ID})
	}
	return out
}

// Steer is additive steering along the unit axis at one layer with strength c relative to the layer's average
// residual norm (coeff = c * avg_norm, the paper's convention); c < 0 steers away from the Assistant.
func (a *VectorFile) Steer(layer int, c float64) (model.Intervention, error) {
	u, ok := a.Layers[layer]
	if !ok {
		return model.Intervention{}, fmt.Errorf("the axis has no vector at layer %d (it has %v)", layer, a.LayerList())
	}
	scale, ok := a.AvgNorm[layer]
	if !ok || scale <= 0 {
		return model.Intervention{}, fmt.Errorf("the axis file gives no average residual norm for layer %d: run keel axis calibrate", layer)
	}
	return model.Intervention{Layer: layer, Kind: model.Add, Vectors: [][]float32{u}, Coeff: c * scale, Label: fmt.Sprintf("steer %+.2f", c)}, nil
}

// WeightsFingerprint identifies a model's weights without reading all of them: sha256 over each safetensors
// shard's name, size, header and first and last MiB, so that it is instant on a 70B checkpoint and still
// changes when a fine-tune rewrites the weights.
func WeightsFingerprint(dir string) (string, error) {
	shards, err := WeightFiles(dir)
	if err != nil {
		return "", err
	}
	hash := sha256.New()
	for _, path := range shards {
		f, err := os.Open(path)
		if err != nil {
			return "", err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return "", err
		}
		fmt.Fprintf(hash, "%s\x00%d\x00", filepath.Base(path), st.Size())
		const edge = 1 << 20
		if st.Size() <= 2*edge {
			_, err = io.Copy(hash, f)
		} else {
			if _, err = io.CopyN(hash, f, edge); err == nil {
				_, err = io.Copy(hash, io.NewSectionReader(f, st.Size()-edge, edge))
			}
		}
		f.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
	}
	return hex.EncodeToString(hash.Sum(nil)), nil
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

// WeightsSHA256 is the sha256 of a model's safetensors files read whole, in name order: what a recorded session
// names its weights by (WeightsFingerprint is the quick identity for axis lineage).
func WeightsSHA256(dir string) (string, error) {
	files, err := WeightFiles(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// WeightFiles are a model folder's safetensors files in name order.
func WeightFiles(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("%s: no *.safetensors files", dir)
	}
	sort.Strings(files)
	return files, nil
}
