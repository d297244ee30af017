package steer

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/steer/ptfile"
)

// ImportPaperFile converts one value of the paper's released .pt files into keel vector files under out and
// returns the files it wrote: [layers, d_model] tensors (the axis, the default vector, role vectors) and the
// capping config's experiments (as cap files under out/caps). force replaces files that exist.
func ImportPaperFile(path string, v any, out, modelID string, nLayers int, force bool) ([]string, error) {
	base := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	src := "imported from " + filepath.Base(path)
	switch x := v.(type) {
	case *ptfile.Tensor:
		if len(x.Shape) != 2 {
			return nil, fmt.Errorf("%s: a tensor of shape %v; keel imports [layers, d_model] vectors", path, x.Shape)
		}
		L, D := int(x.Shape[0]), int(x.Shape[1])
		if L == 0 || D == 0 {
			return nil, fmt.Errorf("%s: a tensor of shape %v holds no vectors; keel imports [layers, d_model] with both above 0", path, x.Shape)
		}
		raw := map[int][]float32{}
		for l := 0; l < L; l++ {
			raw[l] = x.Data[l*D : (l+1)*D]
		}
		h := Header{Model: modelID, Source: src}
		dest := filepath.Join(out, base+".safetensors")
		switch {
		case base == "assistant_axis":
			h.Sign, h.Operation = SignAssistant, OpProject
		case base == "default_vector":
			h.Sign, h.Operation = "the default Assistant's mean activation", OpAdd
		default:
			h.Sign, h.Operation = "the mean activation of "+base, OpAdd
			if filepath.Base(filepath.Dir(path)) == "role_vectors" {
				dest = filepath.Join(out, "role_vectors", base+".safetensors")
			}
		}
		a, err := NewVectorFile(h, raw, L)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if err := refuseToReplace(dest, force); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return nil, err
		}
		return []string{dest}, SaveVectorFile(dest, a)
	case *ptfile.Dict:
		return importCaps(path, x, out, modelID, nLayers, force)
	}
	return nil, fmt.Errorf("%s: holds a %T; keel imports [layers, d_model] tensors and capping configs", path, v)
}

// importCaps converts AA's capping config: role-ward unit vectors v with ceilings <h, v> <= cap become keel's
// floors <h, u> >= tau on u = -v/|v|, tau = -cap/|v| (the same half-space).
func importCaps(path string, d *ptfile.Dict, out, modelID string, nLayers int, force bool) ([]string, error) {
	bad := func(what string) error {
		return fmt.Errorf("%s: %s; a capping config is {'vectors': {name: {'vector', 'layer'}}, 'experiments': [{'id', 'interventions': [{'vector', 'cap'}]}]}", path, what)
	}
	if nLayers <= 0 {
		return nil, fmt.Errorf("%s: give --n-layers N (or import assistant_axis.pt in the same command) so the caps know the model's depth", path)
	}
	vecsV, ok := d.Get("vectors")
	vecs, ok2 := vecsV.(*ptfile.Dict)
	expsV, ok3 := d.Get("experiments")
	exps, ok4 := expsV.(*[]any)
	if !ok || !ok2 || !ok3 || !ok4 {
		return nil, bad("no 'vectors' dict and 'experiments' list")
	}
	type vec struct {
		v     []float32
		layer int
	}
	byName := map[string]vec{}
	for i, k := range vecs.Keys {
		name, _ := k.(string)
		entry, ok := vecs.Values[i].(*ptfile.Dict)
		if !ok {
			return nil, bad(fmt.Sprintf("vector %q is not a dict", name))
		}
		tv, _ := entry.Get("vector")
		lv, _ := entry.Get("layer")
		t, ok1 := tv.(*ptfile.Tensor)
		layer, ok2 := lv.(int64)
		if !ok1 || !ok2 || layer < 0 || int(layer) >= nLayers {
			return nil, bad(fmt.Sprintf("vector %q needs a tensor 'vector' and a 'layer' below %d", name, nLayers))
		}
		byName[name] = vec{t.Data, int(layer)}
	}
	if err := os.MkdirAll(filepath.Join(out, "caps"), 0o755); err != nil {
		return nil, err
	}
	var written []string
	for i, e := range *exps {
		ed, ok := e.(*ptfile.Dict)
		if !ok {
			return nil, bad(fmt.Sprintf("experiment %d is not a dict", i))
		}
		idV, _ := ed.Get("id")
		id, _ := idV.(string)
		ivV, _ := ed.Get("interventions")
		ivs, ok := ivV.(*[]any)
		if id == "" || !ok || strings.ContainsAny(id, `/\`) {
			return nil, bad(fmt.Sprintf("experiment %d needs an 'id' (no slashes) and an 'interventions' list", i))
		}
		h := Header{Model: modelID, Sign: SignAssistant, Operation: OpCap, ID: id, Tau: map[int]float64{},
			Source: "imported from " + filepath.Base(path) + " (role-ward ceilings turned into +axis floors)"}
		if j := strings.LastIndex(id, "-p"); j >= 0 {
			h.Percentile, _ = strconv.ParseFloat(id[j+2:], 64)
		}
		raw := map[int][]float32{}
		for _, iv := range *ivs {
			ivd, ok := iv.(*ptfile.Dict)
			if !ok {
				return nil, bad(fmt.Sprintf("experiment %s has an intervention that is not a dict", id))
			}
			nameV, _ := ivd.Get("vector")
			name, _ := nameV.(string)
			capV, _ := ivd.Get("cap")
			capF, ok := capV.(float64)
			if c, isInt := capV.(int64); isInt {
				capF, ok = float64(c), true
			}
			src, known := byName[name]
			if !ok || !known {
				return nil, bad(fmt.Sprintf("experiment %s: intervention on %q needs a known vector and a numeric cap", id, name))
			}
			n := Norm(src.v)
			if n == 0 {
				return nil, fmt.Errorf("%s: vector %q has length 0", path, name)
			}
			u := make([]float32, len(src.v))
			for k, x := range src.v {
				u[k] = float32(-float64(x) / n)
			}
			raw[src.layer] = u
			h.Tau[src.layer] = -capF
		}
		a, err := NewVectorFile(h, raw, nLayers)
		if err != nil {
			return nil, fmt.Errorf("%s: experiment %s: %w", path, id, err)
		}
		dest := filepath.Join(out, "caps", id+".safetensors")
		if err := refuseToReplace(dest, force); err != nil {
			return nil, err
		}
		if err := SaveVectorFile(dest, a); err != nil {
			return nil, err
		}
		written = append(written, dest)
	}
	return written, nil
}

// refuseToReplace keeps an existing vector file unless the user asked for it to be replaced.
func refuseToReplace(dest string, force bool) error {
	if _, err := os.Stat(dest); err == nil && !force {
		return fmt.Errorf("%s exists: pass --force to replace it, or import into another --out", dest)
	}
	return nil
}
