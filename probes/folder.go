package probes

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/steer"
)

// The files of an axis folder (what `keel axis extract` and `keel axis calibrate` write).
const (
	AxisFile          = "axis.safetensors"           // the unit Assistant Axis per layer, with average norms
	DefaultVectorFile = "default_vector.safetensors" // the default Assistant's mean activation per layer
	CalibrationFile   = "calibration.json"           // role-ward percentiles per layer (the cap thresholds)
	CappingFile       = "capping.json"               // `keel eval capping`'s figures and its best setting
	CapsDir           = "caps"                       // one cap file per (window, percentile)
)

// AxisFolder is an extraction folder as the workbench, the trainers and the evaluations read it: the axis and,
// where they exist, the default vector, the calibration and the capping figures.
type AxisFolder struct {
	Dir         string // "" when opened from a lone axis file
	AxisPath    string
	Axis        *steer.VectorFile
	Default     *steer.VectorFile // nil when the folder has none
	Calibration *Calibration      // nil when the folder has none
	Capping     *CapEvalReport    // nil when the folder has none
}

// OpenAxisFolder reads an extraction folder, or a lone axis file (then with no calibration: no capping).
func OpenAxisFolder(path string) (*AxisFolder, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("axis %s: %w: give an extraction folder (keel axis extract --out DIR) or an axis file", path, err)
	}
	f := &AxisFolder{AxisPath: path}
	if st.IsDir() {
		f.Dir, f.AxisPath = path, filepath.Join(path, AxisFile)
		if _, err := os.Stat(f.AxisPath); err != nil {
			return nil, fmt.Errorf("%s: no %s in the folder: give an extraction folder (keel axis extract --out DIR) or an axis file", path, AxisFile)
		}
	}
	if f.Axis, err = steer.LoadVectorFile(f.AxisPath); err != nil {
		return nil, err
	}
	dir := filepath.Dir(f.AxisPath)
	if def, err := steer.LoadVectorFile(filepath.Join(dir, DefaultVectorFile)); err == nil {
		f.Default = def
	} else if !errors.Is(err, fs.ErrNotExist) && f.Dir != "" {
		return nil, err
	}
	if f.Dir == "" {
		return f, nil
	}
	if raw, err := os.ReadFile(filepath.Join(f.Dir, CalibrationFile)); err == nil {
		var cal Calibration
		if err := json.Unmarshal(raw, &cal); err != nil || len(cal.RoleWard) != f.Axis.NLayers {
			return nil, fmt.Errorf("%s: not a calibration of the axis's %d layers: rerun keel axis calibrate --dir %s", filepath.Join(f.Dir, CalibrationFile), f.Axis.NLayers, f.Dir)
		}
		f.Calibration = &cal
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if raw, err := os.ReadFile(filepath.Join(f.Dir, CappingFile)); err == nil {
		var rep CapEvalReport
		if err := json.Unmarshal(raw, &rep); err != nil {
			return nil, fmt.Errorf("%s: %v: rerun keel eval capping --dir %s", filepath.Join(f.Dir, CappingFile), err, f.Dir)
		}
		f.Capping = &rep
	}
	return f, nil
}

// OpenAxisFolderFor opens an axis folder (or file) for a loaded model: its layers and width must fit, and it must
// have been made on these weights or on weights they descend from (ignoreHash: any weights of the shape). The
// relation says which ("axis of the base model").
func OpenAxisFolderFor(path string, lm *model.LM, ignoreHash bool) (*AxisFolder, steer.Relation, error) {
	f, err := OpenAxisFolder(path)
	if err != nil {
		return nil, 0, err
	}
	w, err := steer.IdentifyWeights(lm.Dir)
	if err != nil {
		return nil, 0, err
	}
	rel, err := f.Axis.Fit(f.AxisPath, lm.NumLayers(), lm.HiddenSize(), w, ignoreHash)
	if err != nil {
		return nil, 0, err
	}
	return f, rel, nil
}

// Save writes what the folder holds into dir: the axis, the default vector, the calibration with a cap file per
// calibrated window and percentile, and the capping figures.
func (f *AxisFolder) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := steer.SaveVectorFile(filepath.Join(dir, AxisFile), f.Axis); err != nil {
		return err
	}
	if f.Default != nil {
		if err := steer.SaveVectorFile(filepath.Join(dir, DefaultVectorFile), f.Default); err != nil {
			return err
		}
	}
	if f.Calibration != nil {
		if err := writeJSON(filepath.Join(dir, CalibrationFile), f.Calibration); err != nil {
			return err
		}
		if len(f.Calibration.proj) > 0 {
			if err := f.saveCaps(dir); err != nil {
				return err
			}
		}
	}
	if f.Capping != nil {
		if err := writeJSON(filepath.Join(dir, CappingFile), f.Capping); err != nil {
			return err
		}
	}
	f.Dir, f.AxisPath = dir, filepath.Join(dir, AxisFile)
	return nil
}

// CapIDs are the cap files Save writes (one per calibrated window and percentile).
func (f *AxisFolder) CapIDs() []string {
	var ids []string
	for _, w := range CapWindows(f.Axis.NLayers) {
		for _, p := range CalibrationPercentiles {
			ids = append(ids, CapRule{Window: w, P: p}.ID())
		}
	}
	return ids
}

func (f *AxisFolder) saveCaps(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, CapsDir), 0o755); err != nil {
		return err
	}
	for _, w := range CapWindows(f.Axis.NLayers) {
		for _, p := range CalibrationPercentiles {
			c, err := f.Calibration.CapAxis(f.Axis, w, p)
			if err != nil {
				return err
			}
			if err := steer.SaveVectorFile(filepath.Join(dir, CapsDir, c.ID+".safetensors"), c); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeJSON(path string, v any) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, raw)
}

// Scale is the drift line and the Assistant's mean projection at a layer (see steer.VectorFile.Scale); ok is false
// without a default vector.
func (f *AxisFolder) Scale(layer int) (line, assistant float64, ok bool) {
	if f.Default == nil {
		return 0, 0, false
	}
	return f.Axis.Scale(f.Default, layer)
}

// Percentiles are the role-ward percentiles the calibration offers, lowest first (none without one).
func (f *AxisFolder) Percentiles() []float64 {
	if f.Calibration == nil || len(f.Calibration.RoleWard) == 0 {
		return nil
	}
	var ps []float64
	for name := range f.Calibration.RoleWard[0] {
		if p, err := ParsePercentile(name); err == nil {
			ps = append(ps, p)
		}
	}
	sort.Float64s(ps)
	return ps
}

// Caps are the interventions of a cap rule: a floor at tau on the unit axis at every layer of its window.
func (f *AxisFolder) Caps(r CapRule) ([]model.Intervention, error) {
	if f.Calibration == nil {
		return nil, fmt.Errorf("the axis has no calibration: run keel axis calibrate --dir on its extraction folder")
	}
	if err := r.Check(f.Axis.NLayers); err != nil {
		return nil, err
	}
	if _, ok := f.Calibration.tau(0, r.P); !ok {
		var names []string
		for _, p := range f.Percentiles() {
			names = append(names, PercentileName(p))
		}
		return nil, fmt.Errorf("no percentile %s in the calibration (it has %s)", PercentileName(r.P), strings.Join(names, ", "))
	}
	c, err := f.Calibration.CapAxis(f.Axis, r.Window, r.P)
	if err != nil {
		return nil, err
	}
	return c.Caps(), nil
}

// Tau is the cap floor a rule puts at a layer (NaN outside its window or without a calibration).
func (f *AxisFolder) Tau(r CapRule, layer int) float64 {
	if f.Calibration == nil || layer < r.Window[0] || layer >= r.Window[1] {
		return math.NaN()
	}
	v, ok := f.Calibration.tau(layer, r.P)
	if !ok {
		return math.NaN()
	}
	return v
}

// CapRule is a capping setting: a window of layers (a Python slice) and a role-ward percentile as a fraction
// (0.25). Its id is the paper's spelling, "layers_3:5-p0.25"; its percentile's name is "p25".
type CapRule struct {
	Window [2]int
	P      float64
}

// ID is the paper's name of the setting.
func (r CapRule) ID() string { return CapID(r.Window[0], r.Window[1], r.P) }

// Check refuses a window outside the model's layers or a percentile outside (0, 1).
func (r CapRule) Check(layers int) error {
	if r.Window[0] < 0 || r.Window[1] > layers || r.Window[0] >= r.Window[1] {
		return fmt.Errorf("layers %d:%d are not a window of the model's %d layers (give A:B with 0 <= A < B <= %d)", r.Window[0], r.Window[1], layers, layers)
	}
	if !(r.P > 0 && r.P < 1) {
		return fmt.Errorf("percentile %s: give one between p0 and p100, such as p25", PercentileName(r.P))
	}
	return nil
}

// ParseCapID reads the name of a capping setting: the paper's spelling with the percentile as a fraction
// ("layers_3:5-p0.25"), or keel's percentile name ("layers_3:5-p25"): a number of 1 or more is a percentile.
func ParseCapID(id string) (CapRule, error) {
	var r CapRule
	rest, ok := strings.CutPrefix(id, "layers_")
	win, pct, ok2 := strings.Cut(rest, "-p")
	if !ok || !ok2 {
		return r, fmt.Errorf("cap id %q: want layers_A:B-pN, such as layers_3:5-p25 (or the paper's layers_3:5-p0.25)", id)
	}
	if _, err := fmt.Sscanf(win, "%d:%d", &r.Window[0], &r.Window[1]); err != nil {
		return r, fmt.Errorf("cap id %q: the window %q is not A:B", id, win)
	}
	p, err := strconv.ParseFloat(pct, 64)
	if err != nil || math.IsNaN(p) || p <= 0 || p >= 100 {
		return r, fmt.Errorf("cap id %q: the percentile %q is not p1 to p99 (or a fraction, p0.25)", id, "p"+pct)
	}
	if p >= 1 {
		p /= 100
	}
	r.P = p
	return r, nil
}

// ParsePercentile reads a percentile's name ("p25", "p1", "p2.5") as a fraction.
func ParsePercentile(name string) (float64, error) {
	num, ok := strings.CutPrefix(name, "p")
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || !(v > 0 && v < 100) {
		return 0, fmt.Errorf("percentile %q: give p and a number between 0 and 100, such as p25", name)
	}
	return v / 100, nil
}

// ParseWindow reads a layer window given as a Python slice, "A:B".
func ParseWindow(s string) ([2]int, error) {
	var w [2]int
	a, b, ok := strings.Cut(s, ":")
	var errA, errB error
	w[0], errA = strconv.Atoi(a)
	w[1], errB = strconv.Atoi(b)
	if !ok || errA != nil || errB != nil {
		return w, fmt.Errorf("layers %q: give a window as A:B, such as 2:6", s)
	}
	return w, nil
}

// ModelAxisDir is the axis folder a model folder carries as its own (modelDir/axis, where `keel model build`,
// the embedded model's unpacking and `keel axis extract --out MODEL/axis` put it), or "" when it has none.
func ModelAxisDir(modelDir string) string {
	dir := filepath.Join(modelDir, "axis")
	if _, err := os.Stat(filepath.Join(dir, AxisFile)); err != nil {
		return ""
	}
	return dir
}

// OpenModelAxis opens the axis a command was given (dir, a folder or file) or, without one, the model's own
// (ModelAxisDir); nil when there is neither.
func OpenModelAxis(lm *model.LM, dir string, ignoreHash bool) (*AxisFolder, error) {
	if dir == "" {
		dir = ModelAxisDir(lm.Dir)
	}
	if dir == "" {
		return nil, nil
	}
	f, _, err := OpenAxisFolderFor(dir, lm, ignoreHash)
	return f, err
}
