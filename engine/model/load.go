package model

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
)

// Options choose where and how a model runs.
type Options struct {
	// Device holds the embedding, takes the inputs and runs the interventions; their records and the logits come
	// back on it.
	Device torch.Device
	// Layers places each decoder layer (len: num_hidden_layers; nil: every layer on Device), e.g. a model split
	// over two GPUs, or its last layers kept on the CPU (--offload). The final norm and the output head go with the
	// last layer placed on a GPU (headDevice). Plan fills it from --device and --offload.
	Layers []torch.Device
	// Context is the positions per row the fit check sizes the KV cache for before loading (0: 4096, or
	// max_position_embeddings when that is smaller).
	Context int
	DType   torch.DType // zero value Float32
	// Unfused runs every decode step op by op (forward), never as one fused step (fused.go): the reference the
	// fused step is tested and benchmarked against.
	Unfused bool
}

// Layer holds one decoder layer's weights (zero Tensors where the architecture has none).
type Layer struct {
	AttnNorm, AttnPostNorm, MLPNorm, MLPPostNorm Tensor
	Q, K, V, O                                   Tensor
	QBias, KBias, VBias, OBias                   Tensor
	QNorm, KNorm                                 Tensor
	Gate, Up, Down                               Tensor
}

// NamedTensor is a weight with its Hugging Face name.
type NamedTensor struct {
	Name   string
	Tensor Tensor
}

// Tensor is re-exported so architecture code reads without the package prefix.
type Tensor = torch.Tensor

// Model is a loaded decoder-only transformer.
type Model struct {
	Config *Config
	Spec   Spec
	Opts   Options
	RT     *torch.Runtime

	Embed, Norm, LMHead Tensor
	// Score is a classifier's head [labels, hidden] (Config.IsClassifier), read at a sequence's last token.
	Score  Tensor
	Layers []Layer
	Names  []NamedTensor // every weight under its Hugging Face name, in checkpoint order

	// Training switches dropout on (LoRA dropout); generation leaves it off.
	Training bool
	// LoRA is the adapter configuration when adapters are attached.
	LoRA *LoRAConfig

	adapters    map[string]*Adapter
	loraDropout float64
	weights     *torch.Scope
	files       *safetensors.Set // kept open while CPU weights alias the mapping
	ropes       []*ropeTable     // [0]: every layer's, or the full-attention layers'; [1]: sliding layers' own
	embedMult   float64
	fused       fusedDecoder
	prefix      string // where the checkpoint keeps the decoder: "model." or an image-text model's language model
}

// weightName is the Hugging Face name of layer i's tensor.
func weightName(i int, rest string) string { return "model.layers." + strconv.Itoa(i) + "." + rest }

// decoderPrefix finds where a checkpoint keeps the decoder's weights: under "model." (a causal LM), or under an
// image-text model's language model (Gemma 3 4B and up: "language_model.model." as published,
// "model.language_model." as newer transformers save it). The vision tower's weights are not read.
func decoderPrefix(files *safetensors.Set) string {
	for _, p := range []string{"model.", "language_model.model.", "model.language_model."} {
		if files.Has(p + "embed_tokens.weight") {
			return p
		}
	}
	return "model."
}

// checkpointName is where the checkpoint stores the weight keel names name (Hugging Face's causal-LM name).
func (m *Model) checkpointName(name string) string {
	if m.prefix == "model." || m.prefix == "" {
		return name
	}
	if rest, ok := strings.CutPrefix(name, "model."); ok {
		return m.prefix + rest
	}
	if name == "lm_head.weight" && m.prefix == "language_model.model." {
		return "language_model.lm_head.weight"
	}
	return name
}

// weightSource yields one weight of the given shape on dev; aliased reports that it shares memory with the mapping.
type weightSource func(name string, shape []int64, dev torch.Device) (t Tensor, aliased bool, err error)

// layerDevice is where decoder layer i runs.
func (o Options) layerDevice(i int) torch.Device {
	if i < len(o.Layers) {
		return o.Layers[i]
	}
	return o.Device
}

// headDevice holds the final norm and the output head: the last GPU a layer is placed on, so that layers kept on
// the CPU do not also bring the largest matrix there; without a GPU, the last layer's device.
func (o Options) headDevice() torch.Device {
	for i := len(o.Layers) - 1; i >= 0; i-- {
		if o.Layers[i].CUDA {
			return o.Layers[i]
		}
	}
	if n := len(o.Layers); n > 0 {
		return o.Layers[n-1]
	}
	return o.Device
}

// Devices lists the devices the model is placed on, each once, Device first.
func (m *Model) Devices() []torch.Device {
	out := []torch.Device{m.Opts.Device}
	for _, d := range append(append([]torch.Device(nil), m.Opts.Layers...), m.Opts.headDevice()) {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// split reports whether any part of the model runs off Device.
func (o Options) split() bool {
	for _, d := range o.Layers {
		if d != o.Device {
			return true
		}
	}
	return false
}

// LoadWeights builds a Model from config and a folder of safetensors.
func LoadWeights(rt *torch.Runtime, dir string, cfg *Config, opts Options) (*Model, error) {
	if err := checkOptions(rt, cfg, opts); err != nil {
		return nil, err
	}
	if err := checkFits(rt, cfg, opts); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return loadWeights(rt, dir, cfg, opts)
}

// loadWeights is LoadWeights once the options and the fit are checked.
func loadWeights(rt *torch.Runtime, dir string, cfg *Config, opts Options) (*Model, error) {
	spec, err := SpecFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s/config.json: %w", dir, err)
	}
	files, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	m := &Model{Config: cfg, Spec: spec, Opts: opts, RT: rt, weights: rt.NewScope(), files: files, ropes: newRopes(cfg, spec), prefix: decoderPrefix(files)}
	if err := layersMatchConfig(files, cfg, dir, m.prefix); err != nil {
		files.Close()
		return nil, err
	}
	aliased, err := m.build(m.loadTensor, files.Has(m.checkpointName("lm_head.weight")))
	if err != nil {
		m.Close()
		return nil, err
	}
	if !aliased {
		files.Close()
		m.files = nil
	}
	return m, nil
}

// layersMatchConfig refuses weights holding decoder layers past config.json's num_hidden_layers: the model would
// load without them and compute something else than the checkpoint.
func layersMatchConfig(files *safetensors.Set, cfg *Config, dir, prefix string) error {
	deepest := -1
	for _, f := range files.Files {
		for name := range f.Header.Tensors {
			rest, ok := strings.CutPrefix(name, prefix+"layers.")
			if !ok {
				continue
			}
			i, err := strconv.Atoi(rest[:max(strings.IndexByte(rest, '.'), 0)])
			if err == nil {
				deepest = max(deepest, i)
			}
		}
	}
	if deepest >= cfg.NumHiddenLayers {
		return fmt.Errorf("%s: the weights hold decoder layers 0..%d, config.json's num_hidden_layers is %d: the weights and config.json do not belong together", dir, deepest, cfg.NumHiddenLayers)
	}
	return nil
}

func checkOptions(rt *torch.Runtime, cfg *Config, opts Options) error {
	if err := rt.CheckDevice(opts.Device); err != nil {
		return err
	}
	if opts.Layers != nil {
		if len(opts.Layers) != cfg.NumHiddenLayers {
			return fmt.Errorf("placement of %d layers for a model of %d", len(opts.Layers), cfg.NumHiddenLayers)
		}
		for _, d := range opts.Layers {
			if err := rt.CheckDevice(d); err != nil {
				return err
			}
		}
	}
	switch opts.DType {
	case torch.Float32, torch.BFloat16:
		return nil
	case torch.Float16:
		onCPU := !opts.Device.CUDA
		for _, d := range opts.Layers {
			onCPU = onCPU || !d.CUDA
		}
		if !onCPU {
			return nil
		}
		// Some libtorch builds have no half-precision matmul on the CPU: find out before loading a model.
		s := rt.NewScope().NoGrad()
		defer s.Close()
		x := s.To(s.FromData([]float32{1, 2, 3, 4}, torch.Float32, []int64{2, 2}, torch.CPU), torch.Float16, torch.CPU)
		s.Linear(x, x, torch.Tensor{})
		if err := s.Err(); err != nil {
			return fmt.Errorf("--dtype f16 on the CPU: this libtorch cannot multiply half-precision matrices on the CPU: use f32 or bf16 there (f16 on CUDA)")
		}
		return nil
	}
	return fmt.Errorf("unsupported compute dtype %s: use f32, f16 or bf16", opts.DType)
}

// build fills the model's weights from src, in Hugging Face names.
func (m *Model) build(src weightSource, hasLMHead bool) (aliased bool, err error) {
	dev := m.Opts.Device
	load := func(name string, shape ...int64) Tensor {
		if m.weights.Err() != nil {
			return Tensor{}
		}
		t, alias, err := src(name, shape, dev)
		if err != nil {
			m.weights.Fail(err)
			return Tensor{}
		}
		aliased = aliased || alias
		m.Names = append(m.Names, NamedTensor{name, t})
		return t
	}
	c, spec := m.Config, m.Spec
	d, hd := int64(c.HiddenSize), int64(c.HeadDim)
	qd, kvd := int64(c.NumAttentionHeads)*hd, int64(c.NumKeyValueHeads)*hd
	ff, v := int64(c.IntermediateSize), int64(c.VocabSize)
	m.Embed = load("model.embed_tokens.weight", v, d)
	m.Layers = make([]Layer, c.NumHiddenLayers)
	for i := range m.Layers {
		l := &m.Layers[i]
		dev = m.Opts.layerDevice(i)
		n := func(rest string) string { return weightName(i, rest) }
		if spec.PostNormsOnly {
			l.AttnPostNorm = load(n("post_attention_layernorm.weight"), d)
			l.MLPPostNorm = load(n("post_feedforward_layernorm.weight"), d)
		} else {
			l.AttnNorm = load(n("input_layernorm.weight"), d)
		}
		switch {
		case spec.PostNormsOnly:
		case spec.SandwichNorms:
			l.AttnPostNorm = load(n("post_attention_layernorm.weight"), d)
			l.MLPNorm = load(n("pre_feedforward_layernorm.weight"), d)
			l.MLPPostNorm = load(n("post_feedforward_layernorm.weight"), d)
		default:
			l.MLPNorm = load(n("post_attention_layernorm.weight"), d)
		}
		l.Q = load(n("self_attn.q_proj.weight"), qd, d)
		l.K = load(n("self_attn.k_proj.weight"), kvd, d)
		l.V = load(n("self_attn.v_proj.weight"), kvd, d)
		l.O = load(n("self_attn.o_proj.weight"), d, qd)
		if spec.QKVBias {
			l.QBias = load(n("self_attn.q_proj.bias"), qd)
			l.KBias = load(n("self_attn.k_proj.bias"), kvd)
			l.VBias = load(n("self_attn.v_proj.bias"), kvd)
		}
		if spec.OBias {
			l.OBias = load(n("self_attn.o_proj.bias"), d)
		}
		if spec.QKNorm {
			l.QNorm = load(n("self_attn.q_norm.weight"), hd)
			l.KNorm = load(n("self_attn.k_norm.weight"), hd)
		}
		if spec.QKNormFull {
			l.QNorm = load(n("self_attn.q_norm.weight"), qd)
			l.KNorm = load(n("self_attn.k_norm.weight"), kvd)
		}
		l.Gate = load(n("mlp.gate_proj.weight"), ff, d)
		l.Up = load(n("mlp.up_proj.weight"), ff, d)
		l.Down = load(n("mlp.down_proj.weight"), d, ff)
	}
	dev = m.Opts.headDevice()
	m.Norm = load("model.norm.weight", d)
	dev = m.Opts.Device
	switch {
	case c.IsClassifier():
		// A reward model has no lm_head; the embedding stands in so the decoder's shared code runs unchanged. The
		// score head reads the final hidden states, which come back to Device.
		m.Score = load("score.weight", int64(c.Labels()), d)
		m.LMHead = m.Embed
	case spec.Tied || !hasLMHead && c.TieWordEmbeddings == nil:
		// A checkpoint without lm_head whose config is silent on tying is tied in practice.
		m.LMHead = m.Embed
	default:
		dev = m.Opts.headDevice()
		m.LMHead = load("lm_head.weight", v, d)
	}
	if head := m.Opts.headDevice(); m.LMHead == m.Embed && head != m.Opts.Device {
		// On a split model the tied head is a copy of the embedding on the head's device.
		m.LMHead = m.weights.To(m.Embed, m.Opts.DType, head)
	}
	if spec.EmbedScale != 0 {
		m.embedMult = roundTo(spec.EmbedScale, m.Opts.DType)
	}
	return aliased, m.weights.Err()
}

// loadTensor makes a device tensor of the compute dtype from the checkpoint, aliasing the mmap'ed bytes when
// no conversion or copy is needed (CPU, same dtype).
func (m *Model) loadTensor(name string, shape []int64, dev torch.Device) (Tensor, bool, error) {
	data, info, file, err := m.files.Data(m.checkpointName(name))
	if err != nil {
		return Tensor{}, false, fmt.Errorf("%w: the checkpoint does not match config.json's %s", err, m.Config.Architecture())
	}
	if !sameShape(info.Shape, shape) {
		return Tensor{}, false, fmt.Errorf("%s: tensor %q has shape %v but config.json implies %v: the weights and config.json do not belong together", file, name, info.Shape, shape)
	}
	var src torch.DType
	switch info.DType {
	case "F32":
		src = torch.Float32
	case "F16":
		src = torch.Float16
	case "BF16":
		src = torch.BFloat16
	default:
		return Tensor{}, false, fmt.Errorf("%s: tensor %q has dtype %s; keel loads F32, F16 and BF16 weights", file, name, info.DType)
	}
	if len(data) == 0 {
		return m.weights.Zeros(shape, m.Opts.DType, dev), false, nil
	}
	tmp := m.RT.NewScope()
	defer tmp.Close()
	blob := tmp.FromBlob(unsafe.Pointer(&data[0]), src, shape)
	if src == m.Opts.DType && !dev.CUDA {
		tmp.MoveTo(m.weights, blob)
		return blob, true, tmp.Err()
	}
	t := tmp.To(blob, m.Opts.DType, dev)
	if tmp.Err() == nil && tmp.SharesStorage(t, blob) {
		t = tmp.Clone(t)
	}
	tmp.MoveTo(m.weights, t)
	if err := tmp.Err(); err != nil {
		return Tensor{}, false, fmt.Errorf("%s: tensor %q: %w", file, name, err)
	}
	return t, false, nil
}

func sameShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// roundTo rounds v to the precision of dtype (Gemma's embedding normalizer is a tensor of the model dtype).
func roundTo(v float64, dt torch.DType) float64 {
	f := float32(v)
	switch dt {
	case torch.BFloat16:
		return float64(bf16Round(f))
	case torch.Float16:
		return float64(f16Round(f))
	}
	return float64(f)
}

// Params lists every weight tensor (for autograd and optimizers), each once.
func (m *Model) Params() []Tensor {
	ps := make([]Tensor, len(m.Names))
	for i, n := range m.Names {
		ps[i] = n.Tensor
	}
	return ps
}

// Close frees the weights and unmaps the checkpoint.
func (m *Model) Close() {
	m.fused.close()
	if m.weights != nil {
		m.weights.Close()
	}
	if m.files != nil {
		m.files.Close()
		m.files = nil
	}
}

// NumLayers is the number of decoder layers (hook sites 0..NumLayers-1).
func (m *Model) NumLayers() int { return len(m.Layers) }

// HiddenSize is the residual-stream width.
func (m *Model) HiddenSize() int { return m.Config.HiddenSize }

// Window is the positions the model has (max_position_embeddings): a prompt and its reply together fit in it.
func (m *Model) Window() int { return m.Config.MaxPositionEmbeddings }
