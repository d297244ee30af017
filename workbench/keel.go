package workbench

import (
	"fmt"
	"math"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/probes"
)

// KeelOptions is keel's extension of a request: {"cap": "on" | "off" | "layers_A:B-pP", "steer": {"c": C,
// "layer": L}, "project": [layers], "positions": "all" | "generated"}.
type KeelOptions struct {
	Cap     string        `json:"cap,omitempty"`
	Steer   *SteerOptions `json:"steer,omitempty"`
	Project []int         `json:"project,omitempty"`
	// Positions is where the cap and the steer act: "all" (the default: every position, prompt and reply) or
	// "generated" (only the positions that choose reply tokens: the prompt's last and the reply's).
	Positions string `json:"positions,omitempty"`
}

// SteerOptions is the extension's steering: c times the layer's average residual norm along the axis.
type SteerOptions struct {
	C     float64 `json:"c"`
	Layer *int    `json:"layer,omitempty"`
}

// KeelInterventions are the interventions and projected layers keel's extension asks of a model of the given
// layers over an axis folder (nil: none): "on" caps with the folder's calibrated rule (the workbench's default
// rule without one), an id with that rule; steering is c times the layer's average norm at its layer (the middle
// one by default), applied before the caps. `keel generate` reads its flags through here too.
func KeelInterventions(axis *probes.AxisFolder, layers int, k KeelOptions) ([]model.Intervention, []int, error) {
	c := DefaultControls(layers)
	if axis != nil {
		c = DefaultControlsFor(layers, axis.Axis.Model)
	}
	switch k.Cap {
	case "", "off":
	case "on":
		c.CapOn = true
		if axis != nil && axis.Capping != nil {
			if r, err := probes.ParseCapID(axis.Capping.Best.ID); err == nil {
				c.Cap = r
			}
		}
	default:
		if len(k.Cap) > 64 { // the id is echoed in errors: a long one is not sent back
			return nil, nil, fmt.Errorf("cap: a %d-byte string is not a cap id: give \"on\", \"off\" or layers_A:B-pN, such as layers_3:5-p25", len(k.Cap))
		}
		r, err := probes.ParseCapID(k.Cap)
		if err != nil {
			return nil, nil, fmt.Errorf("cap: %v (or \"on\", \"off\")", err)
		}
		if err := r.Check(layers); err != nil {
			return nil, nil, fmt.Errorf("cap %q: %v", k.Cap, err)
		}
		c.CapOn, c.Cap = true, r
	}
	if k.Steer != nil {
		if math.IsNaN(k.Steer.C) || math.IsInf(k.Steer.C, 0) || math.Abs(k.Steer.C) > 100 {
			return nil, nil, fmt.Errorf("steer.c %v: give a number within +-100 (times the layer's average norm)", k.Steer.C)
		}
		c.SteerOn, c.SteerCoeff = true, k.Steer.C
		if k.Steer.Layer != nil {
			c.SteerLayer = *k.Steer.Layer
		}
		if c.SteerLayer < 0 || c.SteerLayer >= layers {
			return nil, nil, fmt.Errorf("steer.layer %d: the model has layers 0 to %d", c.SteerLayer, layers-1)
		}
	}
	switch k.Positions {
	case "", "all":
	case "generated":
		c.GeneratedOnly = true
	default:
		return nil, nil, fmt.Errorf("positions %.40q: give \"all\" (every position) or \"generated\" (the reply's)", k.Positions)
	}
	ivs, err := Interventions(axis, c)
	if err != nil {
		return nil, nil, err
	}
	if len(k.Project) > 0 && axis == nil {
		return nil, nil, fmt.Errorf("project: the server has no axis (start it with --axis DIR)")
	}
	for _, l := range k.Project {
		if axis != nil {
			if _, ok := axis.Axis.Layers[l]; !ok {
				return nil, nil, fmt.Errorf("project: the axis has no layer %d (it has %v)", l, axis.Axis.LayerList())
			}
		}
	}
	return ivs, k.Project, nil
}
