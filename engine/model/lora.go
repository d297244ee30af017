package model

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/torch"
)

// LoRAConfig describes low-rank adapters (PEFT's names): h = W x + (alpha / r) * B A dropout(x).
type LoRAConfig struct {
	R             int      `json:"r"`
	Alpha         float64  `json:"lora_alpha"`
	Dropout       float64  `json:"lora_dropout"`
	TargetModules []string `json:"target_modules"` // q, k, v, o, gate, up, down (or their *_proj names)
}

// Adapter is one projection's low-rank update.
type Adapter struct {
	A, B  Tensor // A [r, in], B [out, r]
	Scale float64
}

// moduleNames maps short target names to the projection names.
var moduleNames = map[string]string{"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}

func adapterKey(layer int, module string) string { return strconv.Itoa(layer) + "." + module }

// AttachLoRA adds adapters to the target projections of every layer: A drawn from a Kaiming-uniform-like range
// (seeded through libtorch), B zero, so the model is unchanged until trained. It returns the adapter tensors
// under PEFT's names.
func (m *Model) AttachLoRA(cfg LoRAConfig, seed uint64) ([]NamedTensor, error) {
	if cfg.R <= 0 {
		return nil, fmt.Errorf("lora rank must be positive (got %d)", cfg.R)
	}
	if cfg.Alpha == 0 {
		cfg.Alpha = float64(cfg.R)
	}
	if cfg.Dropout < 0 || cfg.Dropout >= 1 {
		return nil, fmt.Errorf("lora dropout %v must be in [0, 1)", cfg.Dropout)
	}
	if len(cfg.TargetModules) == 0 {
		cfg.TargetModules = []string{"q", "k", "v", "o", "gate", "up", "down"}
	}
	var targets []string
	for _, t := range cfg.TargetModules {
		t = strings.TrimSuffix(t, "_proj")
		if _, ok := moduleNames[t]; !ok {
			return nil, fmt.Errorf("unknown LoRA target module %q: use q, k, v, o, gate, up, down", t)
		}
		targets = append(targets, t)
	}
	sort.Strings(targets)
	if err := m.RT.ManualSeed(seed); err != nil {
		return nil, err
	}
	if m.adapters == nil {
		m.adapters = map[string]*Adapter{}
	}
	m.loraDropout = cfg.Dropout
	m.LoRA = &cfg
	s := m.weights
	var named []NamedTensor
	for i := range m.Layers {
		for _, t := range targets {
			w := m.projection(i, t)
			shape := s.Shape(w)
			if shape == nil {
				return nil, s.Err()
			}
			out, in := shape[0], shape[1]
			bound := 1 / math.Sqrt(float64(in))
			tmp := m.RT.NewScope()
			// A has the spread of PEFT's uniform(-1/sqrt(in), 1/sqrt(in)), drawn as a normal of the same variance.
			dev := m.Opts.layerDevice(i)
			a := tmp.To(tmp.MulScalar(tmp.Randn([]int64{int64(cfg.R), in}, torch.Float32, m.Opts.Device), bound/math.Sqrt(3)), m.Opts.DType, dev)
			b := tmp.Zeros([]int64{out, int64(cfg.R)}, m.Opts.DType, dev)
			tmp.MoveTo(s, a, b)
			if err := tmp.Err(); err != nil {
				tmp.Close()
				return nil, err
			}
			tmp.Close()
			ad := &Adapter{A: a, B: b, Scale: cfg.Alpha / float64(cfg.R)}
			m.adapters[adapterKey(i, t)] = ad
			base := "base_model.model." + weightName(i, map[bool]string{true: "self_attn.", false: "mlp."}[t == "q" || t == "k" || t == "v" || t == "o"]+moduleNames[t])
			named = append(named, NamedTensor{base + ".lora_A.weight", a}, NamedTensor{base + ".lora_B.weight", b})
		}
	}
	return named, s.Err()
}

// projection returns layer i's weight for a short module name.
func (m *Model) projection(i int, module string) Tensor {
	l := &m.Layers[i]
	switch module {
	case "q":
		return l.Q
	case "k":
		return l.K
	case "v":
		return l.V
	case "o":
		return l.O
	case "gate":
		return l.Gate
	case "up":
		return l.Up
	}
	return l.Down
}

// proj is x W^T (+ b), plus the layer's adapter for the module when one is attached.
func (m *Model) proj(s *torch.Scope, layer int, module string, x, w, b Tensor) Tensor {
	y := s.Linear(x, w, b)
	if m.adapters == nil {
		return y
	}
	ad, ok := m.adapters[adapterKey(layer, module)]
	if !ok {
		return y
	}
	if m.Training && m.loraDropout > 0 {
		x = s.Dropout(x, m.loraDropout, true)
	}
	return s.Add(y, s.MulScalar(s.Linear(s.Linear(x, ad.A, Tensor{}), ad.B, Tensor{}), ad.Scale))
}

// MergeLoRA folds every adapter into its base weight (W += scale * B A) and removes the adapters.
func (m *Model) MergeLoRA() error {
	s := m.RT.NewScope().NoGrad()
	defer s.Close()
	for key, ad := range m.adapters {
		parts := strings.SplitN(key, ".", 2)
		i, _ := strconv.Atoi(parts[0])
		w := m.projection(i, parts[1])
		s.CopyInto(w, s.Add(w, s.MulScalar(s.Matmul(ad.B, ad.A), ad.Scale)))
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("merging LoRA adapters: %w", err)
	}
	m.adapters = nil
	m.LoRA = nil
	return nil
}
