package train

import (
	"fmt"
	"math"
	"strconv"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
)

// AdamW is torch.optim.AdamW's update with its moments held in keel-owned tensors, so checkpoints can save and
// restore them exactly.
type AdamW struct {
	Config torch.AdamWConfig
	Step   int // updates done so far
	params []model.NamedTensor
	m, v   []torch.Tensor
	state  *torch.Scope
	rt     *torch.Runtime
}

// NewAdamW makes zero moments for params.
func NewAdamW(rt *torch.Runtime, params []model.NamedTensor, cfg torch.AdamWConfig) (*AdamW, error) {
	o := &AdamW{Config: cfg, params: params, state: rt.NewScope(), rt: rt}
	for _, p := range params {
		dt, dev := o.state.Meta(p.Tensor)
		shape := o.state.Shape(p.Tensor)
		o.m = append(o.m, o.state.Zeros(shape, dt, dev))
		o.v = append(o.v, o.state.Zeros(shape, dt, dev))
	}
	if err := o.state.Err(); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// Update applies one step at learning rate lr to every parameter with a gradient.
func (o *AdamW) Update(lr float64) error {
	o.Step++
	cfg := o.Config
	cfg.LR = lr
	s := o.rt.NewScope()
	defer s.Close()
	for i, p := range o.params {
		s.AdamWUpdate(p.Tensor, o.m[i], o.v[i], cfg, o.Step)
	}
	return s.Err()
}

// ZeroGrad drops every parameter's gradient.
func (o *AdamW) ZeroGrad() error {
	s := o.rt.NewScope()
	defer s.Close()
	for _, p := range o.params {
		s.ZeroGrad(p.Tensor)
	}
	return s.Err()
}

// moments pairs each parameter's saved names with its moment tensors.
func (o *AdamW) moments(fn func(name string, t torch.Tensor) error) error {
	for i, p := range o.params {
		if err := fn("exp_avg."+p.Name, o.m[i]); err != nil {
			return err
		}
		if err := fn("exp_avg_sq."+p.Name, o.v[i]); err != nil {
			return err
		}
	}
	return nil
}

// Save writes the moments and step to a safetensors file.
func (o *AdamW) Save(path string) error {
	var ts []safetensors.Tensor
	s := o.rt.NewScope().NoGrad()
	defer s.Close()
	err := o.moments(func(name string, m torch.Tensor) error {
		t, err := tensorBytes(s, m)
		t.Name = name
		ts = append(ts, t)
		return err
	})
	if err != nil {
		return err
	}
	return safetensors.Write(path, ts, map[string]string{"step": strconv.Itoa(o.Step)})
}

// Load restores moments and step saved by Save.
func (o *AdamW) Load(path string) error {
	f, err := safetensors.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	step, err := strconv.Atoi(f.Header.Metadata["step"])
	if err != nil {
		return fmt.Errorf("%s: no step in the metadata", path)
	}
	s := o.rt.NewScope().NoGrad()
	defer s.Close()
	err = o.moments(func(name string, m torch.Tensor) error {
		if err := loadInto(s, f, name, m); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	o.Step = step
	return s.Err()
}

// Close frees the moments.
func (o *AdamW) Close() { o.state.Close() }

// tensorBytes copies a tensor to host as F32 safetensors data.
func tensorBytes(s *torch.Scope, t torch.Tensor) (safetensors.Tensor, error) {
	shape := s.Shape(t)
	f := s.Float32s(t)
	if err := s.Err(); err != nil {
		return safetensors.Tensor{}, err
	}
	return safetensors.Tensor{DType: "F32", Shape: shape, Data: safetensors.F32Bytes(f)}, nil
}

// loadInto copies a saved F32 tensor into dst (same shape).
func loadInto(s *torch.Scope, f *safetensors.File, name string, dst torch.Tensor) error {
	data, info, err := f.Data(name)
	if err != nil {
		return err
	}
	if info.DType != "F32" {
		return fmt.Errorf("tensor %q is %s, want F32", name, info.DType)
	}
	want := s.Shape(dst)
	if fmt.Sprint(want) != fmt.Sprint(info.Shape) {
		return fmt.Errorf("tensor %q has shape %v, the model needs %v: the checkpoint belongs to another model", name, info.Shape, want)
	}
	dt, dev := s.Meta(dst)
	src := s.To(s.FromData(safetensors.F32s(data), torch.Float32, info.Shape, torch.CPU), dt, dev)
	s.CopyInto(dst, src)
	return s.Err()
}

// clipAndStep ends a training step: it clips the global gradient norm, refuses a non-finite loss or norm (the
// error names the last good checkpoint), then applies the update at lr and clears the gradients. It returns the
// norm before clipping.
func (o *AdamW) clipAndStep(params []torch.Tensor, maxNorm, lr, loss float64, lastGood string) (float64, error) {
	cs := o.rt.NewScope()
	norm := cs.ClipGradNorm(params, maxNorm)
	err := cs.Err()
	cs.Close()
	if err != nil {
		return 0, err
	}
	if math.IsNaN(loss) || math.IsInf(loss, 0) || math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm, fmt.Errorf("loss %v, grad norm %v: training diverged; lower the learning rate; last good checkpoint: %s", loss, norm, orNone(lastGood))
	}
	if err := o.Update(lr); err != nil {
		return norm, err
	}
	return norm, o.ZeroGrad()
}
