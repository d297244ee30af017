package evals

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// AxisReward is the axis reward for a model at its middle layer, from an axis folder: dir, or the model's own
// axis/ (unpacked from the binary for the embedded persona model).
func AxisReward(lm *model.LM, dir string, ignoreHash bool) (train.Reward, error) {
	if dir == "" {
		dir = filepath.Join(lm.Dir, "axis")
		_, statErr := os.Stat(filepath.Join(dir, probes.AxisFile))
		if statErr != nil && filepath.Base(lm.Dir) == "persona-"+models.PersonaSHA256()[:16] {
			var err error
			if dir, err = models.PersonaAxis(lm.Dir); err != nil {
				return nil, err
			}
		}
	}
	f, _, err := probes.OpenAxisFolderFor(dir, lm, ignoreHash)
	if err != nil {
		return nil, fmt.Errorf("the axis reward: %w (give --axis DIR, a `keel axis extract` folder)", err)
	}
	if f.Default == nil {
		return nil, fmt.Errorf("the axis reward: %s has no %s: rerun keel axis extract", dir, probes.DefaultVectorFile)
	}
	return train.NewAxisReward(lm, f.Axis, f.Default, lm.NumLayers()/2)
}
