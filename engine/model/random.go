package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/atomicfile"
)

// NewRandom builds a model of the given config with random weights drawn by libtorch (seeded): linear weights
// N(0, 1/fan_in), embeddings N(0, 1), norm weights 1 + N(0, 0.1^2) (N(0, 0.1^2) where the norm adds 1), biases
// N(0, 0.02^2). Distinct, well-spread logits make comparisons against other implementations meaningful.
func NewRandom(rt *torch.Runtime, cfg *Config, opts Options, seed uint64) (*Model, error) {
	return newRandom(rt, cfg, opts, seed, func(spec *Spec, name string, shape []int64) (std, mean float64) {
		std = 1.0
		switch {
		case strings.HasSuffix(name, "norm.weight"):
			std = 0.1
			if spec.NormOffset == 0 {
				mean = 1
			}
		case strings.HasSuffix(name, ".bias"):
			std = 0.02
		case len(shape) == 2 && !strings.Contains(name, "embed_tokens"):
			std = 1 / math.Sqrt(float64(shape[1]))
		}
		return std, mean
	})
}

// NewTrainable builds a model to train from scratch, with GPT-2's initialisation: weights and embeddings
// N(0, 0.02^2), the projections that write into the residual stream (o_proj, down_proj) scaled down by
// sqrt(2 * n_layers) so the stream's variance does not grow with depth, norms at exactly 1 (0 where the norm
// adds 1), biases 0. Initial logits are then near-uniform and the first loss is close to ln(vocab).
func NewTrainable(rt *torch.Runtime, cfg *Config, opts Options, seed uint64) (*Model, error) {
	return newRandom(rt, cfg, opts, seed, func(spec *Spec, name string, shape []int64) (std, mean float64) {
		switch {
		case strings.HasSuffix(name, "norm.weight"):
			if spec.NormOffset == 0 {
				mean = 1
			}
			return 0, mean
		case strings.HasSuffix(name, ".bias"):
			return 0, 0
		case strings.HasSuffix(name, "o_proj.weight") || strings.HasSuffix(name, "down_proj.weight"):
			return 0.02 / math.Sqrt(2*float64(cfg.NumHiddenLayers)), 0
		}
		return 0.02, 0
	})
}

// initFunc gives the normal distribution a weight is drawn from.
type initFunc func(spec *Spec, name string, shape []int64) (std, mean float64)

func newRandom(rt *torch.Runtime, cfg *Config, opts Options, seed uint64, dist initFunc) (*Model, error) {
	if err := checkOptions(rt, cfg, opts); err != nil {
		return nil, err
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	spec, err := SpecFor(cfg)
	if err != nil {
		return nil, err
	}
	if err := rt.ManualSeed(seed); err != nil {
		return nil, err
	}
	m := &Model{Config: cfg, Spec: spec, Opts: opts, RT: rt, weights: rt.NewScope(), ropes: newRopes(cfg, spec), prefix: "model."}
	src := func(name string, shape []int64, dev torch.Device) (Tensor, bool, error) {
		// Intermediates live in a scope of their own: only the final weight joins the model.
		s := rt.NewScope()
		defer s.Close()
		std, mean := dist(&spec, name, shape)
		// Draw in f32 on the target device, then convert: the same seed gives the same values in every dtype.
		// Drawn on Device whatever the placement, so that a split model draws what one device does.
		t := s.Randn(shape, torch.Float32, opts.Device)
		t = s.AddScalar(s.MulScalar(t, std), mean)
		t = s.To(t, opts.DType, dev)
		s.MoveTo(m.weights, t)
		return t, false, s.Err()
	}
	if _, err := m.build(src, !spec.Tied); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Save writes the model as a Hugging Face folder: config.json and model.safetensors in dtype (F32, F16 or BF16).
func (m *Model) Save(dir string, dtype torch.DType) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	names := map[torch.DType]string{torch.Float32: "F32", torch.Float16: "F16", torch.BFloat16: "BF16"}
	stName, ok := names[dtype]
	if !ok {
		return fmt.Errorf("save %s: dtype %s not supported (f32, f16, bf16)", dir, dtype)
	}
	s := m.RT.NewScope().NoGrad()
	defer s.Close()
	var tensors []safetensors.Tensor
	for _, n := range m.Names {
		if n.Name == "lm_head.weight" && m.LMHead == m.Embed {
			continue
		}
		shape := s.Shape(n.Tensor)
		host := s.To(n.Tensor, dtype, torch.CPU)
		var data []byte
		if dtype == torch.Float32 {
			f := s.Float32s(host)
			data = make([]byte, 4*len(f))
			for i, x := range f {
				binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(x))
			}
		} else {
			// Every f16/bf16 value is exact in f32, so the round trip through f32 keeps the bits.
			f := s.Float32s(host)
			data = make([]byte, 2*len(f))
			for i, x := range f {
				binary.LittleEndian.PutUint16(data[2*i:], half(x, dtype))
			}
		}
		if err := s.Err(); err != nil {
			return fmt.Errorf("save %s: %s: %w", dir, n.Name, err)
		}
		tensors = append(tensors, safetensors.Tensor{Name: n.Name, DType: stName, Shape: shape, Data: data})
	}
	cfg := *m.Config
	tied := m.LMHead == m.Embed
	cfg.TieWordEmbeddings = &tied
	cfg.TorchDType = map[torch.DType]string{torch.Float32: "float32", torch.Float16: "float16", torch.BFloat16: "bfloat16"}[dtype]
	raw, err := json.MarshalIndent(&cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, "config.json"), func(f *os.File) error { _, err := f.Write(append(raw, '\n')); return err }); err != nil {
		return err
	}
	return safetensors.Write(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": "pt"})
}
