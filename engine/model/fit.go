package model

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/torch"
)

// FitOptions describe a placement to check before loading: the dtype of the weights, the context and batch the
// KV cache must hold, and the memory of each GPU (bytes; none: the CPU alone).
type FitOptions struct {
	DTypeBytes int      // 2 for bf16/f16, 4 for f32
	Context    int      // positions the KV cache holds per row
	Batch      int      // rows decoded together
	GPUs       []int64  // memory of each device, bytes
	Names      []string // the GPUs' names (default cuda:0, cuda:1, ...)
	Offload    int      // decoder layers kept on the CPU
	CPU        int64    // host memory to check the CPU's share against (0: not checked)
}

// DeviceShare is what one device holds under a placement.
type DeviceShare struct {
	Name        string
	Memory      int64 // what the device has
	Layers      int   // decoder layers placed on it
	Weights     int64
	KVCache     int64
	Activations int64
	Reserve     int64 // the CUDA context and allocator slack
	device      torch.Device
}

// Need is everything the device must hold.
func (d DeviceShare) Need() int64 { return d.Weights + d.KVCache + d.Activations + d.Reserve }

// FitReport is a placement of a model over devices, computed from config.json alone.
type FitReport struct {
	Parameters  int64
	WeightBytes int64
	KVBytes     int64 // the whole KV cache at the context and batch asked for
	Devices     []DeviceShare
	Fits        bool
	Advice      string // when it does not fit: the option that would make it fit
}

// gpuReserve is a fixed allowance for what a GPU gives up before any tensor: the CUDA context, cuBLAS workspaces
// and the caching allocator's fragmentation.
const gpuReserve = 1 << 30

// Parameters counts the weights config.json implies: embedding, output head unless tied, and per layer the
// attention projections (with biases where the architecture has them), the MLP and the norms.
func (c *Config) Parameters() (int64, error) {
	n, err := c.parameterShares()
	if err != nil {
		return 0, err
	}
	return n.total(c.NumHiddenLayers), nil
}

// parameterShares are the parameters of one decoder layer, of the embedding (first device) and of the final norm
// with the output head unless it is the embedding (last device).
type parameterShares struct{ layer, embed, head int64 }

func (n parameterShares) total(layers int) int64 { return int64(layers)*n.layer + n.embed + n.head }

func (c *Config) parameterShares() (parameterShares, error) {
	spec, err := SpecFor(c)
	if err != nil {
		return parameterShares{}, err
	}
	D, V := int64(c.HiddenSize), int64(c.VocabSize)
	n := parameterShares{layer: layerParameters(c, spec), embed: V * D, head: D}
	if !spec.Tied {
		n.head += V * D
	}
	return n, nil
}

func layerParameters(c *Config, s Spec) int64 {
	D, I := int64(c.HiddenSize), int64(c.IntermediateSize)
	q, kv := int64(c.NumAttentionHeads*c.HeadDim), int64(c.NumKeyValueHeads*c.HeadDim)
	n := D*q + 2*D*kv + q*D + 3*D*I + 2*D // projections, MLP, two norms (before, or with PostNormsOnly after)
	if s.QKVBias {
		n += q + 2*kv
	}
	if s.OBias {
		n += D
	}
	if s.QKNorm {
		n += 2 * int64(c.HeadDim)
	}
	if s.QKNormFull {
		n += q + kv
	}
	if s.SandwichNorms {
		n += 2 * D
	}
	return n
}

// EstimateFit places the model: the embedding on the first GPU, the final norm and output head on the last,
// decoder layers over the GPUs in proportion to the memory each has left, Offload layers on the CPU (everything,
// when no GPU is given). Activations are one prefill chunk's working set and the last positions' logits.
func (c *Config) EstimateFit(o FitOptions) (*FitReport, error) {
	r, err := c.place(o)
	if err != nil || r.Fits {
		return r, err
	}
	r.Advice = c.fitAdvice(o)
	return r, nil
}

// fitSizes are the bytes a placement distributes.
type fitSizes struct{ perLayer, embed, head, tiedHead, kvPerLayer, act int64 }

// sizes validates o and returns the sizes and a report holding the model's totals.
func (c *Config) sizes(o FitOptions) (fitSizes, *FitReport, error) {
	if o.DTypeBytes <= 0 || o.Context <= 0 || o.Batch <= 0 {
		return fitSizes{}, nil, fmt.Errorf("fit: dtype size, context and batch must be positive")
	}
	if o.Offload < 0 || o.Offload > c.NumHiddenLayers {
		return fitSizes{}, nil, fmt.Errorf("fit: --offload %d outside 0..%d layers", o.Offload, c.NumHiddenLayers)
	}
	n, err := c.parameterShares()
	if err != nil {
		return fitSizes{}, nil, err
	}
	L, D, V := int64(c.NumHiddenLayers), int64(c.HiddenSize), int64(c.VocabSize)
	b := int64(o.DTypeBytes)
	params := n.total(c.NumHiddenLayers)
	z := fitSizes{perLayer: n.layer * b, embed: n.embed * b, head: n.head * b}
	if n.head == D { // tied: a head on another device than the embedding is a copy of it
		z.tiedHead = V * D * b
	}
	z.kvPerLayer = 2 * int64(c.NumKeyValueHeads*c.HeadDim) * int64(o.Context) * int64(o.Batch) * b
	// One prefill chunk (prefillTokens over the batch) through the widest layer, in the compute dtype, with float32
	// scores for one attention block, and the float32 logits of the last position of each row.
	chunk := min(int64(o.Context)*int64(o.Batch), prefillTokens)
	z.act = chunk*(4*D+3*int64(c.IntermediateSize))*b + int64(o.Batch)*V*4 +
		int64(c.NumAttentionHeads)*min(chunk, 128)*int64(o.Context)*4
	return z, &FitReport{Parameters: params, WeightBytes: params * b, KVBytes: L * z.kvPerLayer}, nil
}

// place is EstimateFit without the advice.
func (c *Config) place(o FitOptions) (*FitReport, error) {
	z, r, err := c.sizes(o)
	if err != nil {
		return nil, err
	}
	onGPU := c.NumHiddenLayers - o.Offload
	if len(o.GPUs) == 0 {
		r.Devices = []DeviceShare{{Name: "cpu", Memory: o.CPU, Layers: c.NumHiddenLayers, Weights: r.WeightBytes, KVCache: r.KVBytes, Activations: z.act}}
		r.Fits = o.CPU == 0 || r.Devices[0].Need() <= o.CPU
		return r, nil
	}
	// Layers split in proportion to what each GPU has left after its fixed share (the embedding on the first,
	// the head on the last, the reserve and the activations on all), so that every GPU fills alike.
	free := make([]int64, len(o.GPUs))
	var total int64
	for i, mem := range o.GPUs {
		free[i] = mem - gpuReserve - z.act
		if i == 0 {
			free[i] -= z.embed
		}
		if i == len(o.GPUs)-1 {
			free[i] -= z.head
		}
		free[i] = max(free[i], 0)
		total += free[i]
	}
	placed := 0
	for i, mem := range o.GPUs {
		d := DeviceShare{Name: o.gpuName(i), Memory: mem, Reserve: gpuReserve, Activations: z.act}
		if i == 0 {
			d.Weights += z.embed
		}
		if i == len(o.GPUs)-1 {
			d.Weights += z.head
			d.Layers = onGPU - placed
		} else if total > 0 {
			d.Layers = min(onGPU-placed, int(float64(onGPU)*float64(free[i])/float64(total)+0.5))
		}
		d.Weights += int64(d.Layers) * z.perLayer
		d.KVCache = int64(d.Layers) * z.kvPerLayer
		placed += d.Layers
		r.Devices = append(r.Devices, d)
	}
	if o.Offload > 0 {
		r.Devices = append(r.Devices, DeviceShare{Name: "cpu", Memory: o.CPU, Layers: o.Offload, Weights: int64(o.Offload) * z.perLayer, KVCache: int64(o.Offload) * z.kvPerLayer})
	}
	r.Fits = r.allFit()
	return r, nil
}

func (r *FitReport) allFit() bool {
	for _, d := range r.Devices {
		if d.Memory > 0 && d.Need() > d.Memory {
			return false
		}
	}
	return true
}

func (o FitOptions) gpuName(i int) string {
	if i < len(o.Names) {
		return o.Names[i]
	}
	return fmt.Sprintf("cuda:%d", i)
}

// LayerDevices turns a report's placement into Options.Layers: the GPUs' layers in order, then the CPU's.
func (r *FitReport) LayerDevices() ([]torch.Device, error) {
	var out []torch.Device
	for _, d := range r.Devices {
		dev, err := torch.ParseDevice(d.Name)
		if err != nil {
			return nil, err
		}
		for range d.Layers {
			out = append(out, dev)
		}
	}
	return out, nil
}

// placementReport is what each device holds under opts' placement, in the order the forward pass meets them.
func (c *Config) placementReport(o FitOptions, opts Options) (*FitReport, error) {
	z, r, err := c.sizes(o)
	if err != nil {
		return nil, err
	}
	at := map[torch.Device]int{}
	share := func(d torch.Device) *DeviceShare {
		i, ok := at[d]
		if !ok {
			i = len(r.Devices)
			at[d] = i
			sh := DeviceShare{Name: d.String(), Activations: z.act, device: d}
			if d.CUDA {
				sh.Reserve = gpuReserve
			}
			r.Devices = append(r.Devices, sh)
		}
		return &r.Devices[i]
	}
	share(opts.Device).Weights += z.embed
	for i := 0; i < c.NumHiddenLayers; i++ {
		d := share(opts.layerDevice(i))
		d.Layers++
		d.Weights += z.perLayer
		d.KVCache += z.kvPerLayer
	}
	head := opts.headDevice()
	share(head).Weights += z.head
	if head != opts.Device {
		share(head).Weights += z.tiedHead
	}
	return r, nil
}

// fitContext is the context the load-time check sizes the KV cache for.
func (c *Config) fitContext(opts Options) int {
	if opts.Context > 0 {
		return opts.Context
	}
	if c.MaxPositionEmbeddings > 0 && c.MaxPositionEmbeddings < 4096 {
		return c.MaxPositionEmbeddings
	}
	return 4096
}

// checkFits refuses, before any weight is read, a placement some device cannot hold: what each GPU has free now
// (other processes counted) and the host's available memory, against the weights, the KV cache at the context
// asked for, one prefill chunk's activations and the GPU reserve. A device whose memory cannot be read is not
// checked.
func checkFits(rt *torch.Runtime, cfg *Config, opts Options) error {
	o := FitOptions{DTypeBytes: opts.DType.Size(), Context: cfg.fitContext(opts), Batch: 1}
	r, err := cfg.placementReport(o, opts)
	if err != nil {
		return err
	}
	for i := range r.Devices {
		d := &r.Devices[i]
		if d.device.CUDA {
			if free, _, err := rt.CUDAFreeMemory(d.device.Index); err == nil {
				d.Memory = free
			}
		} else {
			d.Memory = hostAvailable()
		}
	}
	for _, d := range r.Devices {
		if d.Memory > 0 && d.Need() > d.Memory {
			parts := fmt.Sprintf("weights %s, KV cache %s at %d positions, activations %s", humanBytes(d.Weights), humanBytes(d.KVCache), o.Context, humanBytes(d.Activations))
			if d.Reserve > 0 {
				parts += ", CUDA reserve " + humanBytes(d.Reserve)
			}
			return fmt.Errorf("does not fit: %s needs %s (%s) and has %s available: %s",
				d.Name, humanBytes(d.Need()), parts, humanBytes(d.Memory), cfg.loadAdvice(o, opts, r))
		}
	}
	return nil
}

// loadAdvice is fitAdvice for a load that was refused (r: its shares, with what each device has): more GPUs or
// layers on the CPU when the model runs on a GPU, otherwise a smaller dtype or a GPU.
func (c *Config) loadAdvice(o FitOptions, opts Options, r *FitReport) string {
	for _, d := range r.Devices {
		if d.Memory > 0 && d.Weights+d.Reserve <= d.Memory && d.Need() > d.Memory {
			return fmt.Sprintf("a smaller --context (the weights alone fit on %s; the KV cache and activations at %d positions do not)", d.Name, o.Context)
		}
	}
	if !opts.Device.CUDA {
		if o.DTypeBytes > 2 {
			return "use --dtype bf16 (half the weights' memory) or run it on a GPU (--device cuda)"
		}
		return "run it on a GPU (--device cuda), or on a machine with more memory"
	}
	for _, d := range r.Devices {
		switch {
		case d.device.CUDA && d.Memory > 0:
			o.GPUs = append(o.GPUs, d.Memory)
		case !d.device.CUDA:
			o.Offload += d.Layers
			o.CPU = d.Memory
		}
	}
	if len(o.GPUs) == 0 {
		return "more GPU memory"
	}
	return c.fitAdvice(o)
}

// hostAvailable is the host memory the kernel can hand out now (MemAvailable), 0 when unknown.
func hostAvailable() int64 {
	raw, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// fitAdvice names what would make the model fit: more GPUs of the same size, or layers kept on the CPU.
func (c *Config) fitAdvice(o FitOptions) string {
	mem := o.GPUs[0]
	var tips []string
	for gpus := len(o.GPUs) + 1; gpus <= 64; gpus++ {
		if f, err := c.place(FitOptions{DTypeBytes: o.DTypeBytes, Context: o.Context, Batch: o.Batch, GPUs: repeatMem(mem, gpus)}); err == nil && f.Fits {
			tips = append(tips, fmt.Sprintf("%d GPUs of %s (--device %s)", gpus, humanBytes(mem), deviceList(gpus)))
			break
		}
	}
	for off := o.Offload + 1; off <= c.NumHiddenLayers; off++ {
		if f, err := c.place(FitOptions{DTypeBytes: o.DTypeBytes, Context: o.Context, Batch: o.Batch, GPUs: o.GPUs, Offload: off, CPU: o.CPU}); err == nil && f.Fits {
			tips = append(tips, fmt.Sprintf("--offload %d (layers on the CPU run at its speed)", off))
			break
		}
	}
	if len(tips) == 0 {
		return "a smaller --context or --dtype, or more GPUs"
	}
	return strings.Join(tips, ", or ")
}

func repeatMem(m int64, n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = m
	}
	return out
}

func deviceList(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf("cuda:%d", i)
	}
	return strings.Join(parts, ",")
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d B", n)
}
