package probes

import (
	_ "embed"
	"encoding/json"
	"path/filepath"
	"strings"
)

// paperModelsJSON is the Assistant Axis release's model table (Lu et al. 2026, the reference code's model
// configs and the released capping configs): for each model the layer the axis is analysed and plotted at and,
// where the paper calibrated capping, its best cap setting. The one place these figures live.
//
//go:embed paper_models.json
var paperModelsJSON []byte

// PaperModel is one row of the table.
type PaperModel struct {
	ID          string `json:"id"`            // the Hugging Face id
	Release     string `json:"release"`       // the folder of the released vectors (lu-christina/assistant-axis-vectors), if any
	Layers      int    `json:"layers"`        // the model's decoder layers
	TargetLayer int    `json:"target_layer"`  // the analysis layer: the plotted and steered one
	Cap         string `json:"cap,omitempty"` // the paper's best capping setting, a cap id ("" where none was calibrated)
}

// PaperModels is the table.
func PaperModels() []PaperModel {
	var rows []PaperModel
	if err := json.Unmarshal(paperModelsJSON, &rows); err != nil {
		panic("probes: paper_models.json: " + err.Error()) // embedded at build time; a test reads it
	}
	return rows
}

// PaperModelFor finds the table's row for a model named by its Hugging Face id, by the release's folder name, or
// by a path into the Hugging Face cache (…/models--ORG--NAME/snapshots/…), case-insensitively.
func PaperModelFor(name string) (PaperModel, bool) {
	if name == "" {
		return PaperModel{}, false
	}
	for _, part := range strings.Split(filepath.ToSlash(name), "/") {
		if rest, ok := strings.CutPrefix(part, "models--"); ok {
			name = strings.Replace(rest, "--", "/", 1)
			break
		}
	}
	for _, m := range PaperModels() {
		if strings.EqualFold(name, m.ID) || m.Release != "" && (strings.EqualFold(name, m.Release) || strings.EqualFold(filepath.Base(name), m.Release)) {
			return m, true
		}
	}
	return PaperModel{}, false
}
