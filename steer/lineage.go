package steer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/keel-lab/keel/internal/atomicfile"
)

// LineageFile is written by keel's trainers into every model folder they export (final weights and loaded
// checkpoints): the fingerprints of the weights the fine-tune started from, so that vector files extracted on a
// base model keep applying to its fine-tunes.
const LineageFile = "keel_lineage.json"

// Lineage is a model folder's keel_lineage.json.
type Lineage struct {
	Base      string   `json:"base"`      // the folder the fine-tune started from, for people reading the file
	Ancestors []string `json:"ancestors"` // weights fingerprints of the base, its base, ..., nearest first
}

// Weights identifies a model's weights and the weights they descend from.
type Weights struct {
	Fingerprint string   // WeightsFingerprint of the folder ("" when it holds no safetensors files)
	Ancestors   []string // from keel_lineage.json, nearest first
}

// IdentifyWeights fingerprints a model folder and reads its lineage. A folder without safetensors files (a
// llama2.c conversion in progress, a test model) has an empty fingerprint: there is nothing to compare.
func IdentifyWeights(dir string) (Weights, error) {
	fp, _ := WeightsFingerprint(dir)
	w := Weights{Fingerprint: fp}
	lin, err := ReadLineage(dir)
	w.Ancestors = lin.Ancestors
	return w, err
}

// ReadLineage reads dir's keel_lineage.json; a folder without one has an empty lineage.
func ReadLineage(dir string) (Lineage, error) {
	var lin Lineage
	raw, err := os.ReadFile(filepath.Join(dir, LineageFile))
	if errors.Is(err, fs.ErrNotExist) {
		return lin, nil
	}
	if err != nil {
		return lin, err
	}
	if err := json.Unmarshal(raw, &lin); err != nil {
		return lin, fmt.Errorf("%s: %v: delete the file to treat the model as unrelated to any other", filepath.Join(dir, LineageFile), err)
	}
	return lin, nil
}

// WriteLineage records in dir that its weights were fine-tuned from baseDir's.
func WriteLineage(dir, baseDir string) error {
	base, err := IdentifyWeights(baseDir)
	if err != nil {
		return err
	}
	lin := Lineage{Base: baseDir}
	if abs, err := filepath.Abs(baseDir); err == nil {
		lin.Base = abs
	}
	if base.Fingerprint != "" {
		lin.Ancestors = append(lin.Ancestors, base.Fingerprint)
	}
	lin.Ancestors = append(lin.Ancestors, base.Ancestors...)
	raw, err := json.MarshalIndent(lin, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, LineageFile), append(raw, '\n'))
}

// Relation is how a vector file's weights relate to the loaded model's.
type Relation int

const (
	SameWeights Relation = iota // the weights it was made on, or nothing to compare
	BaseWeights                 // made on weights the model was fine-tuned from
)

// String is the status-line wording.
func (r Relation) String() string {
	if r == BaseWeights {
		return "axis of the base model"
	}
	return ""
}
