package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/steer"
	"github.com/keel-lab/keel/steer/ptfile"
	"github.com/keel-lab/keel/train"
)

func parseIDs(s string) ([]int, error) {
	var ids []int
	for _, f := range strings.Split(s, ",") {
		id, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("bad --ids %q: want comma-separated token ids", s)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func loadWeightsOnly(mf *cli.ModelFlags) (*model.Model, error) {
	dt, err := torch.ParseDType(mf.DType)
	if err != nil {
		return nil, cli.UsageError{Err: err}
	}
	rt, err := torch.Load()
	if err != nil {
		return nil, err
	}
	devs, err := model.ParseDevices(rt, mf.Device)
	if err != nil {
		return nil, cli.UsageError{Err: err}
	}
	if err := mf.Resolve(); err != nil {
		return nil, err
	}
	cfg, err := model.ReadConfig(mf.Dir)
	if err != nil {
		return nil, err
	}
	opts, _, err := model.Plan(rt, cfg, model.PlacementRequest{Devices: devs, Offload: mf.Offload, DType: dt})
	if err != nil {
		return nil, err
	}
	return model.LoadWeights(rt, mf.Dir, cfg, opts)
}

func writeF32(path string, xs []float32) error {
	b := make([]byte, 4*len(xs))
	for i, x := range xs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return os.WriteFile(path, b, 0o644)
}

func readF32(path string) ([]float32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("%s: %d bytes is not a whole number of float32s", path, len(b))
	}
	return safetensors.F32s(b), nil
}

// devForward writes, for each sequence k of --ids ("1,2,3;4,5,6"), PREFIX.k.logits.f32 [T, V] and
// PREFIX.k.hidden.f32 [L, T, D] (the output of every decoder layer), and for a classifier PREFIX.k.scores.f32
// [labels]; one process serves many sequences.
func devForward(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var mf cli.ModelFlags
	mf.Register(fs)
	idsFlag := fs.String("ids", "", "token ids: comma-separated, sequences separated by ';'")
	out := fs.String("out", "", "output path prefix")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	var seqs [][]int
	for _, part := range strings.Split(*idsFlag, ";") {
		ids, err := parseIDs(part)
		if err != nil {
			return cli.UsageError{Err: err}
		}
		seqs = append(seqs, ids)
	}
	m, err := loadWeightsOnly(&mf)
	if err != nil {
		return err
	}
	defer m.Close()
	var hooks []model.Intervention
	for l := 0; l < m.NumLayers(); l++ {
		hooks = append(hooks, model.Intervention{Layer: l, Kind: model.Capture, Full: true})
	}
	var metas []map[string]int
	for k, ids := range seqs {
		tf, err := m.TeacherForce([][]int{ids}, model.NewHooks(hooks...), nil)
		if err != nil {
			return err
		}
		logits, err := m.Logits(ids, nil)
		if err != nil {
			return err
		}
		L, T, D := m.NumLayers(), len(ids), m.HiddenSize()
		hidden := make([]float32, 0, L*T*D)
		for l := 0; l < L; l++ {
			for t := 0; t < T; t++ {
				hidden = append(hidden, tf.Records[0][t][l].Values...)
			}
		}
		prefix := fmt.Sprintf("%s.%d", *out, k)
		if err := writeF32(prefix+".logits.f32", logits); err != nil {
			return err
		}
		if err := writeF32(prefix+".hidden.f32", hidden); err != nil {
			return err
		}
		meta := map[string]int{"T": T, "V": m.Config.VocabSize, "L": L, "D": D}
		if m.Config.IsClassifier() {
			// A reward model's outputs: the score head at the last token.
			scores, err := m.Scores([][]int{ids}, 1)
			if err != nil {
				return err
			}
			if err := writeF32(prefix+".scores.f32", scores[0]); err != nil {
				return err
			}
			meta["S"] = len(scores[0])
		}
		metas = append(metas, meta)
	}
	return json.NewEncoder(stdout).Encode(metas)
}

// devGenerate runs greedy generation with caps (floor at --tau along --vector on --cap-layers) and steering
// (--steer-coeff times --vector at --steer-layer), printing the ids.
func devGenerate(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var mf cli.ModelFlags
	mf.Register(fs)
	idsFlag := fs.String("ids", "", "comma-separated prompt token ids")
	maxTokens := fs.Int("max-tokens", 64, "tokens to generate")
	vecPath := fs.String("vector", "", "raw float32 file of one unit vector (hidden size values)")
	capLayers := fs.String("cap-layers", "", "comma-separated layers to cap")
	tau := fs.Float64("tau", 0, "cap threshold (floor on <h, u>)")
	steerLayer := fs.Int("steer-layer", -1, "layer to steer (-1 = none)")
	steerCoeff := fs.Float64("steer-coeff", 0, "steering coefficient")
	capsFile := fs.String("caps", "", "a keel cap file (keel axis import of a capping config) to apply as well")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	ids, err := parseIDs(*idsFlag)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	m, err := loadWeightsOnly(&mf)
	if err != nil {
		return err
	}
	defer m.Close()
	var hooks []model.Intervention
	if *vecPath != "" {
		u, err := readF32(*vecPath)
		if err != nil {
			return err
		}
		if *steerLayer >= 0 {
			hooks = append(hooks, model.Intervention{Layer: *steerLayer, Kind: model.Add, Vectors: [][]float32{u}, Coeff: *steerCoeff})
		}
		if *capLayers != "" {
			layers, err := parseIDs(*capLayers)
			if err != nil {
				return cli.UsageError{Err: err}
			}
			for _, l := range layers {
				hooks = append(hooks, model.Intervention{Layer: l, Kind: model.Cap, Vectors: [][]float32{u}, Tau: *tau})
			}
		}
	}
	if *capsFile != "" {
		c, err := steer.LoadVectorFile(*capsFile)
		if err != nil {
			return err
		}
		hooks = append(hooks, c.Caps()...)
	}
	res, err := m.Generate(context.Background(), [][]int{ids}, model.GenerateConfig{MaxTokens: *maxTokens, EOS: []int{-1}, Hooks: model.NewHooks(hooks...)})
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(map[string]any{"ids": res[0].IDs})
}

// devDecode measures decode tokens/s and peak device memory on a random model of a benchmark shape, with hooks
// off and with captures on every layer + caps on 8 layers.
func devDecode(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	shape := fs.String("shape", "llama-1b", "benchmark shape (5m, llama-1b)")
	device := fs.String("device", "cuda", "device")
	dtypeName := fs.String("dtype", "bf16", "dtype")
	prompt := fs.Int("prompt", 16, "prompt tokens")
	tokens := fs.Int("tokens", 128, "decode tokens")
	reps := fs.Int("reps", 3, "runs of each variant (median)")
	batch := fs.Int("batch", 1, "rows decoded together (tokens/s are summed over rows)")
	variants := fs.String("variants", "plain,hooks", "plain, hooks (captures on every layer + caps on 8), captures, caps, sync (plain + one extra device sync per token)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	cfg, ok := benchShapes()[*shape]
	if !ok {
		return cli.Usagef("unknown shape %q", *shape)
	}
	dev, err := torch.ParseDevice(*device)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	dt, err := torch.ParseDType(*dtypeName)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	m, err := model.NewRandom(rt, cfg, model.Options{Device: dev, DType: dt}, 42)
	if err != nil {
		return err
	}
	defer m.Close()
	res := map[string]float64{}
	peak := func() float64 {
		if !dev.CUDA {
			return 0
		}
		_, p, _, err := rt.CUDAMemory(dev.Index)
		if err != nil {
			return -1
		}
		return float64(p)
	}
	all := benchHooks(m).List()
	only := func(k model.Kind) *model.Hooks {
		var list []model.Intervention
		for _, iv := range all {
			if iv.Kind == k {
				list = append(list, iv)
			}
		}
		return model.NewHooks(list...)
	}
	byName := map[string]*model.Hooks{"plain": nil, "sync": nil, "hooks": model.NewHooks(all...), "captures": only(model.Capture), "caps": only(model.Cap)}
	names := strings.Split(*variants, ",")
	for _, name := range names {
		if _, ok := byName[name]; !ok {
			return cli.Usagef("unknown variant %q", name)
		}
	}
	// Warm every variant up first (kernels, cuBLAS handles, the allocator), then interleave the timed runs so
	// drift in the machine's state spreads over all variants alike.
	for _, name := range names {
		if _, err := decodeRate(m, byName[name], *prompt, 32, *batch, name == "sync"); err != nil {
			return err
		}
	}
	rates := map[string][]float64{}
	peaks := map[string]float64{}
	start := time.Now()
	for r := 0; r < *reps; r++ {
		for _, name := range names {
			if dev.CUDA {
				rt.CUDAResetPeak(dev.Index)
			}
			tps, err := decodeRate(m, byName[name], *prompt, *tokens, *batch, name == "sync")
			if err != nil {
				return err
			}
			rates[name] = append(rates[name], tps)
			peaks[name] = math.Max(peaks[name], peak())
		}
	}
	for _, name := range names {
		res["tok_s_"+name] = median(rates[name])
		res["peak_bytes_"+name] = peaks[name]
	}
	res["seconds"] = time.Since(start).Seconds()
	return json.NewEncoder(stdout).Encode(res)
}

// devTiny writes keel's own random-weight tiny checkpoint of every architecture (DIR/NAME), for the script's
// dry run on machines without transformers.
func devTiny(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	out := fs.String("out", "", "output folder")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return cli.Usagef("--out DIR is required")
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	for name, cfg := range model.TinyConfigs() {
		m, err := model.NewRandom(rt, cfg, model.Options{}, 42)
		if err != nil {
			return err
		}
		err = m.Save(filepath.Join(*out, name), torch.Float32)
		m.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// devPT prints every tensor of a torch.save file as JSON {"tensors": {path: {"shape", "dtype", "values"}}}.
func devPT(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	file := fs.String("file", "", "a .pt file written by torch.save")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	raw, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	v, err := ptfile.Read(raw, *file)
	if err != nil {
		return err
	}
	out := map[string]any{}
	for path, t := range ptfile.Tensors(v) {
		// float64 so JSON carries each float32 exactly (float32 encoding prints the shortest float32 form).
		vals := make([]float64, len(t.Data))
		for i, x := range t.Data {
			vals[i] = float64(x)
		}
		out[path] = map[string]any{"shape": t.Shape, "dtype": t.DType, "values": vals}
	}
	return json.NewEncoder(stdout).Encode(map[string]any{"tensors": out})
}

// devSFT trains a small random model on synthetic arithmetic chats (with --bf16, under autocast) and prints the
// held-out loss before and after, so the device check exercises the training path on the GPU.
func devSFT(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	device := fs.String("device", "cuda", "device")
	bf16 := fs.Bool("bf16", true, "bf16 autocast")
	steps := fs.Int("steps", 40, "steps")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "keel-devcheck-sft")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	words := []string{"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
	var data, text strings.Builder
	for i := 0; i < 200; i++ {
		a, b := i%10, (i*7+3)%10
		q, ans := fmt.Sprintf("What is %s plus %s?", words[a], words[b]), fmt.Sprintf("%s plus %s is %d.", words[a], words[b], a+b)
		raw, _ := json.Marshal(map[string]any{"messages": []map[string]string{{"role": "user", "content": q}, {"role": "assistant", "content": ans}}})
		data.Write(append(raw, '\n'))
		text.WriteString(q + "\n" + ans + "\n")
	}
	dataPath := filepath.Join(dir, "data.jsonl")
	if err := os.WriteFile(dataPath, []byte(data.String()), 0o644); err != nil {
		return err
	}
	tj, tc, err := tokenizer.Train(strings.NewReader(text.String()), tokenizer.TrainConfig{VocabSize: 400})
	if err != nil {
		return err
	}
	cfg := model.NewLlamaConfig(model.LlamaShape{Hidden: 256, Intermediate: 688, Layers: 6, Heads: 8, KVHeads: 4, Vocab: 400,
		Context: 512, Tied: true}, nil)
	m, err := model.NewRandom(rt, cfg, model.Options{}, 3)
	if err != nil {
		return err
	}
	mdir := filepath.Join(dir, "model")
	err = m.Save(mdir, torch.Float32)
	m.Close()
	if err != nil {
		return err
	}
	os.WriteFile(filepath.Join(mdir, "tokenizer.json"), tj, 0o644)
	os.WriteFile(filepath.Join(mdir, "tokenizer_config.json"), tc, 0o644)
	run, err := train.NewRun(filepath.Join(dir, "runs"), "sft")
	if err != nil {
		return err
	}
	start := time.Now()
	sc := train.SFTConfig{ModelNameOrPath: mdir, DatasetPath: dataPath, MaxSteps: *steps, LearningRate: 1e-3, PerDeviceTrainBatchSize: 8,
		MaxSeqLength: 64, EvalFraction: 0.1, EvalSteps: *steps / 2, Seed: 1, Device: *device, BF16: *bf16}
	if err := train.RunSFT(context.Background(), rt, run, sc, train.Options{}); err != nil {
		return err
	}
	ms, err := run.ReadMetrics()
	if err != nil {
		return err
	}
	var evals []float64
	for _, mt := range ms {
		if mt.EvalLoss != nil {
			evals = append(evals, *mt.EvalLoss)
		}
	}
	if len(evals) < 2 {
		return fmt.Errorf("no eval losses recorded")
	}
	return json.NewEncoder(stdout).Encode(map[string]any{"eval_first": evals[0], "eval_last": evals[len(evals)-1], "seconds": time.Since(start).Seconds(), "device": *device, "bf16": *bf16})
}
