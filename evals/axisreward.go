package evals

import (
	"fmt"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// AxisReward is the axis reward for a model at its middle layer, from an axis folder: dir, or the model's own
// axis/ (probes.ModelAxisDir).
func AxisReward(lm *model.LM, dir string, ignoreHash bool) (train.Reward, error) {
	f, err := probes.OpenModelAxis(lm, dir, ignoreHash)
	if err == nil && f == nil {
		err = fmt.Errorf("%s has no axis/ folder", lm.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("the axis reward: %w (give --axis DIR, a `keel axis extract` folder)", err)
	}
	if f.Default == nil {
		return nil, fmt.Errorf("the axis reward: %s has no %s: rerun keel axis extract", dir, probes.DefaultVectorFile)
	}
	return train.NewAxisReward(lm, f.Axis, f.Default, lm.NumLayers()/2)
}
