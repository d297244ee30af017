package model

import (
	"fmt"
	"strings"

	"github.com/keel-lab/keel/engine/torch"
)

// PlacementRequest is where a user asks a model to run: --device (one device, a list of GPUs, or every GPU
// there is) and --offload (decoder layers kept on the CPU beside the GPUs).
type PlacementRequest struct {
	Devices []torch.Device
	Offload int
	DType   torch.DType
	Context int // positions per row the KV cache is sized for (0: as Options.Context)
}

// ParseDevices reads --device: cpu, cuda, cuda:N, a comma-separated list of GPUs (cuda:0,cuda:1), or auto (every
// GPU libtorch sees; the CPU when there is none).
func ParseDevices(rt *torch.Runtime, s string) ([]torch.Device, error) {
	if s == "auto" && rt == nil {
		return nil, fmt.Errorf("--device auto needs libtorch loaded to count the GPUs")
	}
	if s == "auto" {
		n := rt.CUDADeviceCount()
		if n == 0 {
			return []torch.Device{torch.CPU}, nil
		}
		out := make([]torch.Device, n)
		for i := range out {
			out[i] = torch.Device{CUDA: true, Index: i}
		}
		return out, nil
	}
	var out []torch.Device
	seen := map[torch.Device]bool{}
	for _, part := range strings.Split(s, ",") {
		d, err := torch.ParseDevice(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		if seen[d] {
			return nil, fmt.Errorf("--device %s names %s twice", s, d)
		}
		seen[d] = true
		out = append(out, d)
	}
	if len(out) > 1 {
		for _, d := range out {
			if !d.CUDA {
				return nil, fmt.Errorf("--device %s: a list names GPUs (cuda:0,cuda:1); keep layers on the CPU with --offload N", s)
			}
		}
	}
	return out, nil
}

// Plan places a model before any weight is read. One device and no offload: everything on it (with a report for
// a GPU, nothing for the CPU). Otherwise the
// decoder layers split over the GPUs in proportion to what each has free now (the embedding on the first, the
// final norm and head on the last), and the last Offload layers run on the CPU. The report is what each device
// will hold; a placement that cannot fit is refused with the option that would make it fit.
func Plan(rt *torch.Runtime, cfg *Config, req PlacementRequest) (Options, *FitReport, error) {
	if len(req.Devices) == 0 {
		req.Devices = []torch.Device{torch.CPU}
	}
	opts := Options{Device: req.Devices[0], DType: req.DType, Context: req.Context}
	if req.Offload < 0 || req.Offload > cfg.NumHiddenLayers {
		return opts, nil, fmt.Errorf("--offload %d: give 0 to %d (the model's decoder layers)", req.Offload, cfg.NumHiddenLayers)
	}
	if req.Offload > 0 && !opts.Device.CUDA {
		return opts, nil, fmt.Errorf("--offload keeps layers on the CPU beside a GPU: give --device cuda (on the CPU alone every layer is there already)")
	}
	if len(req.Devices) == 1 && req.Offload == 0 && !opts.Device.CUDA {
		return opts, nil, nil
	}
	o := FitOptions{DTypeBytes: req.DType.Size(), Context: cfg.fitContext(opts), Batch: 1, Offload: req.Offload, CPU: hostAvailable()}
	for _, d := range req.Devices {
		if err := rt.CheckDevice(d); err != nil {
			return opts, nil, err
		}
		free, _, err := rt.CUDAFreeMemory(d.Index)
		if err != nil {
			return opts, nil, fmt.Errorf("%s: its free memory cannot be read to split the model (%v): rebuild the shim with the CUDA headers (make setup)", d, err)
		}
		o.GPUs = append(o.GPUs, free)
		o.Names = append(o.Names, d.String())
	}
	r, err := cfg.EstimateFit(o)
	if err != nil {
		return opts, nil, err
	}
	if !r.Fits {
		for _, d := range r.Devices {
			if d.Memory > 0 && d.Need() > d.Memory {
				return opts, r, fmt.Errorf("does not fit: %s would hold %d layers and need %s (%d positions of KV cache) with %s available: %s",
					d.Name, d.Layers, humanBytes(d.Need()), o.Context, humanBytes(d.Memory), r.Advice)
			}
		}
	}
	if len(req.Devices) > 1 || req.Offload > 0 {
		if opts.Layers, err = r.LayerDevices(); err != nil {
			return opts, nil, err
		}
	}
	return opts, r, nil
}
