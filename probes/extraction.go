package probes

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/steer"
)

// Writing and reading extraction folders (the files are named in folder.go).

// ExtractAxisFolder runs (or resumes) an extraction into its folder and writes the axis, the default vector, the
// role vectors and the report there.
func ExtractAxisFolder(x *Extractor) (*AxisResult, *steer.VectorFile, error) {
	lm, p, cfg, dir := x.LM, x.Personas, x.Config, x.Dir
	acts, err := x.Run()
	if err != nil {
		return nil, nil, err
	}
	res, err := ComputeAxis(p, acts, cfg.MinCount)
	if err != nil {
		return nil, nil, err
	}
	fp, _ := steer.WeightsFingerprint(lm.Dir)
	h := steer.Header{Model: ModelID(lm), WeightsFingerprint: fp, AvgNorm: map[int]float64{},
		Source: fmt.Sprintf("keel axis extract: %d roles, %d questions x 5 prompts, judge %s", len(res.Roles), cfg.Questions, cfg.Judge)}
	raw := map[int][]float32{}
	def := map[int][]float32{}
	for l := range res.Axis {
		raw[l], def[l] = res.Axis[l], res.Default[l]
		h.AvgNorm[l] = res.AvgNorm[l]
	}
	axis, err := steer.NewVectorFile(h, raw, res.Layers)
	if err != nil {
		return nil, nil, err
	}
	if err := steer.SaveVectorFile(filepath.Join(dir, AxisFile), axis); err != nil {
		return nil, nil, err
	}
	dh := h
	dh.Sign, dh.Operation, dh.Source = "the default Assistant's mean activation", steer.OpAdd, h.Source
	defAxis, err := steer.NewVectorFile(dh, def, res.Layers)
	if err != nil {
		return nil, nil, err
	}
	if err := steer.SaveVectorFile(filepath.Join(dir, DefaultVectorFile), defAxis); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "role_vectors"), 0o755); err != nil {
		return nil, nil, err
	}
	for name, v := range res.Roles {
		rh := h
		rh.Sign, rh.Operation = "the role's mean activation ("+name+")", steer.OpAdd
		vecs := map[int][]float32{}
		for l := range v {
			vecs[l] = v[l]
		}
		ra, err := steer.NewVectorFile(rh, vecs, res.Layers)
		if err != nil {
			return nil, nil, err
		}
		if err := steer.SaveVectorFile(filepath.Join(dir, "role_vectors", strings.ReplaceAll(name, " ", "_")+".safetensors"), ra); err != nil {
			return nil, nil, err
		}
	}
	rep, _ := json.MarshalIndent(res, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(dir, "report.json"), rep); err != nil {
		return nil, nil, err
	}
	return res, axis, nil
}

// ModelID names a model in vector files: its folder, or the embedded model by its weights' hash.
func ModelID(lm *model.LM) string {
	if name := filepath.Base(lm.Dir); strings.HasPrefix(name, "persona-") {
		return "keel-" + name // the embedded model, by its weights' hash
	}
	return filepath.Base(lm.Dir)
}

// LoadExtraction reads a finished extraction folder: its axis, every role's activations and the report.
func LoadExtraction(dir string) (*steer.VectorFile, []*RoleActivations, *AxisResult, error) {
	axis, err := steer.LoadVectorFile(filepath.Join(dir, AxisFile))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w (run keel axis extract --out %s first)", err, dir)
	}
	var res AxisResult
	raw, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err == nil {
		err = json.Unmarshal(raw, &res)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %v: rerun keel axis extract --out %s", filepath.Join(dir, "report.json"), err, dir)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "rollouts", "*.jsonl"))
	sort.Strings(files)
	var acts []*RoleActivations
	for _, f := range files {
		name := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(f), ".jsonl"), "_", " ")
		ra, err := LoadRoleActivations(dir, name)
		if err != nil {
			return nil, nil, nil, err
		}
		acts = append(acts, ra)
	}
	if len(acts) == 0 {
		return nil, nil, nil, fmt.Errorf("%s: no rollouts: run keel axis extract --out %s", dir, dir)
	}
	return axis, acts, &res, nil
}

// CalibrateFolder writes calibration.json and a cap file per window and percentile into dir/caps, returning the
// calibration and the caps' ids.
func CalibrateFolder(dir string, axis *steer.VectorFile, acts []*RoleActivations) (*Calibration, []string, error) {
	cal, err := Calibrate(axis, acts)
	if err != nil {
		return nil, nil, err
	}
	f := &AxisFolder{Axis: axis, Calibration: cal}
	if err := writeJSON(filepath.Join(dir, CalibrationFile), cal); err != nil {
		return nil, nil, err
	}
	if err := f.saveCaps(dir); err != nil {
		return nil, nil, err
	}
	return cal, f.CapIDs(), nil
}
