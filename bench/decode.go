package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keel-lab/keel/engine/convert"
	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
)

// benchShapes are the random models `keel bench decode` measures (Llama architecture, default RoPE so the C++
// reference runs exactly the same ops).
func benchShapes() map[string]*model.Config {
	mk := func(d, ff, layers, heads, kv, vocab int) *model.Config {
		return model.NewLlamaConfig(model.LlamaShape{Hidden: d, Intermediate: ff, Layers: layers, Heads: heads, KVHeads: kv,
			Vocab: vocab, Context: 4096, Tied: true}, nil)
	}
	return map[string]*model.Config{
		"5m":       mk(256, 688, 6, 8, 4, 4096),       // 5.4M parameters
		"llama-1b": mk(2048, 8192, 16, 32, 8, 128256), // Llama-3.2-1B's shape, 1.24B parameters
	}
}

type figure struct {
	Keel      float64 `json:"keel"`
	Reference float64 `json:"reference"`
	Ratio     float64 `json:"ratio"`
	Unit      string  `json:"unit"`
}

func runBenchDecode(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	shapes := fs.String("shape", "5m,llama-1b", "comma-separated shapes: 5m, llama-1b")
	device := fs.String("device", "cpu", "cpu, cuda or cuda:N")
	dtypeName := fs.String("dtype", "f32", "f32, f16 or bf16")
	prompt := fs.Int("prompt", 16, "prompt tokens before decoding")
	tokens := fs.String("tokens", "5m=128,llama-1b=16", "decode steps per run, per shape (shape=N,...) or one number")
	reps := fs.Int("reps", 3, "runs of each variant (interleaved; the median counts)")
	threads := fs.Int("threads", 0, "libtorch CPU threads (0 = default), passed to the C++ reference too")
	noRef := fs.Bool("no-reference", false, "skip the C++ libtorch reference (e.g. on a machine without the compiled bench)")
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	batches := fs.String("batch", "", "also measure keel's batched throughput at these batch sizes (e.g. 8,32; tokens/s summed over rows, against batch 1)")
	l2c := fs.String("llama2c", "", "a llama2.c checkpoint (MODEL.bin,TOKENIZER.bin): keel against a plain C loop on it, one thread")
	text := fs.String("text", "Once upon a time", "the prompt of --llama2c")
	modelDir := fs.String("model", "", "measure this Hugging Face model folder instead of the random shapes (the C++ reference runs its shape when it is a Llama)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *l2c != "" {
		n := 256
		if v, err := strconv.Atoi(*tokens); err == nil && v > 0 {
			n = v
		}
		return benchLlama2c(*l2c, *text, n, *reps, *asJSON, stdout, stderr)
	}
	dev, err := torch.ParseDevice(*device)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	dt, err := torch.ParseDType(*dtypeName)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	steps, err := perShape(*tokens)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	if *threads > 0 {
		if err := rt.SetNumThreads(*threads); err != nil {
			return err
		}
	}
	refBin := ""
	if !*noRef {
		if dev.CUDA {
			return cli.Usagef("the C++ reference runs on CPU only: add --no-reference with --device %s", dev)
		}
		if refBin, err = findDecodeBench(); err != nil {
			return err
		}
	}
	all := map[string]*model.Config(benchShapes())
	names := strings.Split(*shapes, ",")
	var folder *model.LM
	if *modelDir != "" {
		if folder, err = model.Load(rt, *modelDir, model.Options{Device: dev, DType: dt}); err != nil {
			return err
		}
		defer folder.Close()
		name := filepath.Base(filepath.Clean(*modelDir))
		all, names = map[string]*model.Config{name: folder.Config}, []string{name}
		if refBin != "" && folder.Config.Architecture() != "LlamaForCausalLM" {
			fmt.Fprintf(stderr, "bench decode: the C++ reference runs Llama shapes only; %s is %s: keel's own figures only\n", name, folder.Config.Architecture())
			refBin = ""
		}
	}
	figures := map[string]figure{}
	var order []string
	for _, name := range names {
		cfg, ok := all[name]
		if !ok {
			return cli.Usagef("unknown shape %q: use 5m or llama-1b", name)
		}
		n := steps[name]
		if n == 0 {
			n = steps[""]
		}
		if n == 0 {
			n = 32
		}
		fmt.Fprintf(stderr, "bench decode %s: %d prompt + %d decode tokens, %d reps, %s %s\n", name, *prompt, n, *reps, dev, dt)
		var m *model.Model
		if folder != nil {
			m = folder.Model
		} else if m, err = model.NewRandom(rt, cfg, model.Options{Device: dev, DType: dt}, 42); err != nil {
			return err
		}
		closeModel := func() {
			if folder == nil {
				m.Close()
			}
		}
		hooks := benchHooks(m)
		var plain, hooked, unfused, bare, ref []float64
		for r := 0; r < *reps; r++ {
			tps, err := decodeRate(m, nil, *prompt, n, 1, false)
			if err != nil {
				closeModel()
				return err
			}
			plain = append(plain, tps)
			if tps, err = decodeRate(m, hooks, *prompt, n, 1, false); err != nil {
				closeModel()
				return err
			}
			hooked = append(hooked, tps)
			m.Opts.Unfused = true // the same model, every step op by op
			tps, err = decodeRate(m, nil, *prompt, n, 1, false)
			m.Opts.Unfused = false
			if err != nil {
				closeModel()
				return err
			}
			unfused = append(unfused, tps)
			if tps, err = m.BareStepRate(benchPrompt(m, *prompt, 0), n); err != nil {
				closeModel()
				return err
			}
			bare = append(bare, tps)
			if refBin != "" {
				tps, err := runDecodeBench(refBin, cfg, *prompt, n, *threads)
				if err != nil {
					closeModel()
					return err
				}
				ref = append(ref, tps)
			}
		}
		for _, bs := range strings.Split(*batches, ",") {
			b, err := strconv.Atoi(bs)
			if bs == "" {
				continue
			}
			if err != nil || b < 1 {
				closeModel()
				return cli.Usagef("bad --batch %q: use sizes like 8,32", *batches)
			}
			tps, err := decodeRate(m, nil, *prompt, n, b, false)
			if err != nil {
				closeModel()
				return err
			}
			key := fmt.Sprintf("batch%d_%s", b, name)
			figures[key] = ratio(tps, median(plain), "tok/s")
			order = append(order, key)
		}
		closeModel()
		if refBin != "" {
			figures["decode_"+name] = ratio(median(plain), median(ref), "tok/s")
			order = append(order, "decode_"+name)
		}
		figures["hooks_"+name] = ratio(median(hooked), median(plain), "tok/s")
		figures["fused_"+name] = ratio(median(plain), median(unfused), "tok/s")
		figures["generate_"+name] = ratio(median(plain), median(bare), "tok/s")
		order = append(order, "hooks_"+name, "fused_"+name, "generate_"+name)
	}
	return printFigures(stdout, figures, order, *asJSON, map[string]string{
		"decode":   "reference = a plain C++ loop on libtorch running the same decode step (engine/torch/csrc/bench/decode_bench.cpp: every projection one gemv as keel's, a preallocated KV cache, greedy argmax read back each token; the clock starts after the prefill, as keel's)",
		"hooks":    "keel with captures on every layer + caps on 8 layers; reference = keel with no hooks",
		"generate": "keel generate (greedy, the sampler, stop checks and callbacks per token); reference = the model's bare step in a loop (argmax fed back, nothing else)",
		"fused":    "keel's decode step as one shim call (float32 on the CPU); reference = keel running the same step op by op (model.Options.Unfused)",
		"batch":    "keel's decode throughput at batch N (tokens/s over all rows); reference = keel at batch 1",
	})
}

// benchLlama2c decodes a llama2.c checkpoint greedily with keel (converted to a model folder, one libtorch thread)
// and with keel-llama2c-bench, the plain C loop, on the same prompt and token count; the two must choose the same
// tokens, or the figure would compare different work.
func benchLlama2c(files, text string, n, reps int, asJSON bool, stdout, stderr io.Writer) error {
	bin, tok, ok := strings.Cut(files, ",")
	if !ok {
		return cli.Usagef("--llama2c wants MODEL.bin,TOKENIZER.bin (e.g. testdata/stories260k/stories260K.bin,testdata/stories260k/tok512.bin)")
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	if err := rt.SetNumThreads(1); err != nil {
		return err
	}
	ref, err := findBench("keel-llama2c-bench")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "keel-bench-llama2c-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := convert.Llama2c(bin, tok, dir); err != nil {
		return err
	}
	lm, err := model.Load(rt, dir, model.Options{})
	if err != nil {
		return err
	}
	defer lm.Close()
	prompt := lm.Tokenizer.Encode(text, true)
	if len(prompt)+n > lm.Config.MaxPositionEmbeddings {
		return cli.Usagef("%d prompt + %d tokens pass the checkpoint's %d positions: ask fewer --tokens", len(prompt), n, lm.Config.MaxPositionEmbeddings)
	}
	ids := make([]string, len(prompt))
	for i, id := range prompt {
		ids[i] = strconv.Itoa(id)
	}
	fmt.Fprintf(stderr, "bench decode --llama2c: %d prompt + %d tokens (%q), %d reps, one thread\n", len(prompt), n, text, reps)
	var kept, refs []float64
	for r := 0; r < reps; r++ {
		var t0 time.Time
		res, err := lm.Generate(context.Background(), [][]int{prompt}, model.GenerateConfig{MaxTokens: n, EOS: []int{-1},
			OnStep: func(st model.Step) (bool, error) {
				if st.Index == 0 {
					t0 = time.Now()
				}
				return false, nil
			}})
		if err != nil {
			return err
		}
		kept = append(kept, float64(n-1)/time.Since(t0).Seconds())
		out, err := runReference(ref, []string{"ids", "tokens_per_s"}, bin, strconv.Itoa(n), strings.Join(ids, ","))
		if err != nil {
			return err
		}
		refIDs := out["ids"]
		tps, err := strconv.ParseFloat(out["tokens_per_s"], 64)
		if err != nil {
			return fmt.Errorf("%s: tokens_per_s %q: %v", ref, out["tokens_per_s"], err)
		}
		got := make([]string, len(res[0].IDs))
		for i, id := range res[0].IDs {
			got[i] = strconv.Itoa(id)
		}
		if strings.Join(got, ",") != refIDs {
			return fmt.Errorf("keel and the C loop chose different tokens on %s: the figures would compare different work\n keel %s\n C    %s", bin, strings.Join(got, ","), refIDs)
		}
		refs = append(refs, tps)
	}
	// The path a user takes: the keel generate command writing to a pipe, timed whole at two lengths, the
	// difference giving the per-token rate with the start (loading, the prompt) cancelled out.
	short, long := 16, lm.Window()-len(prompt)
	var paths []float64
	for r := 0; r < reps; r++ {
		a, err := timeGenerate(dir, text, short)
		if err != nil {
			return err
		}
		b, err := timeGenerate(dir, text, long)
		if err != nil {
			return err
		}
		if b > a {
			paths = append(paths, float64(long-short)/(b-a).Seconds())
		}
	}
	figs := map[string]figure{"decode_llama2c": ratio(median(kept), median(refs), "tok/s"),
		"decode_llama2c_generate_command": ratio(median(paths), median(refs), "tok/s")}
	return printFigures(stdout, figs, []string{"decode_llama2c", "decode_llama2c_generate_command"}, asJSON, map[string]string{
		"decode_llama2c":                  "keel's decode loop (greedy, one libtorch thread) on the converted checkpoint; reference = a plain C loop on the .bin (engine/torch/csrc/bench/llama2c_bench.c, built as llama2.c's fastest plain build at one thread: -Ofast -march=native, no BLAS, no OpenMP); both choose the same tokens; the clock starts after the prompt",
		"decode_llama2c_generate_command": fmt.Sprintf("the `keel generate --threads 1 --ignore-eos` command to a pipe, the same prompt, timed whole at %d and %d tokens: (difference of tokens) / (difference of seconds); reference as above", short, long),
	})
}

// timeGenerate runs the keel generate command on a model folder and returns its wall time.
func timeGenerate(dir, text string, n int) (time.Duration, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(exe, "generate", "--model", dir, "--chat=false", "--prompt", text, "--max-tokens", strconv.Itoa(n),
		"--temperature", "0", "--threads", "1", "--ignore-eos")
	cmd.Env = append(os.Environ(), "KEEL_TEST_MAIN=1")
	var errOut strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &errOut
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("keel generate: %v: %s", err, strings.TrimSpace(errOut.String()))
	}
	return time.Since(start), nil
}

func perShape(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		name, val, found := strings.Cut(part, "=")
		if !found {
			name, val = "", part
		}
		n, err := strconv.Atoi(val)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad --tokens %q: use N or shape=N,...", s)
		}
		out[name] = n
	}
	return out, nil
}

// benchHooks captures one direction at every layer and caps 8 layers (the middle of the stack).
func benchHooks(m *model.Model) *model.Hooks {
	d := m.HiddenSize()
	u := make([]float32, d)
	for i := range u {
		u[i] = 1 / float32(d)
	}
	var norm float32
	for _, x := range u {
		norm += x * x
	}
	for i := range u {
		u[i] /= float32(sqrt64(float64(norm)))
	}
	var list []model.Intervention
	L := m.NumLayers()
	first := max(0, L/2-4)
	for l := 0; l < L; l++ {
		if l >= first && l < first+8 {
			list = append(list, model.Intervention{Layer: l, Kind: model.Cap, Vectors: [][]float32{u}, Tau: 0})
		}
		list = append(list, model.Intervention{Layer: l, Kind: model.Capture, Vectors: [][]float32{u}})
	}
	return model.NewHooks(list...)
}

// decodeRate generates prompt+n tokens greedily in a batch of `batch` rows (prompts differing in their last
// token) and returns decode tokens/s summed over the rows (the prefill is not counted). extraSync adds one device
// synchronisation per token (a diagnostic of what a sync costs).
func decodeRate(m *model.Model, hooks *model.Hooks, promptLen, n, batch int, extraSync bool) (float64, error) {
	prompts := make([][]int, max(1, batch))
	for b := range prompts {
		prompts[b] = benchPrompt(m, promptLen, b)
	}
	var t0 time.Time
	_, err := m.Generate(context.Background(), prompts, model.GenerateConfig{MaxTokens: n + 1, EOS: []int{-1}, Hooks: hooks,
		OnStep: func(st model.Step) (bool, error) {
			if st.Row != 0 {
				return false, nil
			}
			if st.Index == 0 || extraSync {
				if err := m.RT.Synchronize(m.Opts.Device.Index); err != nil {
					return false, err
				}
			}
			if st.Index == 0 {
				t0 = time.Now()
			}
			return false, nil
		}})
	if err != nil {
		return 0, err
	}
	if err := m.RT.Synchronize(m.Opts.Device.Index); err != nil {
		return 0, err
	}
	return float64(n*len(prompts)) / time.Since(t0).Seconds(), nil
}

// benchPrompt is the b-th prompt of the decode benchmarks: promptLen tokens spread over the vocabulary.
func benchPrompt(m *model.Model, promptLen, b int) []int {
	ids := []int{1}
	for len(ids) < promptLen {
		ids = append(ids, 3+(len(ids)*7919)%(m.Config.VocabSize-3))
	}
	ids[len(ids)-1] = 3 + (ids[len(ids)-1]+b)%(m.Config.VocabSize-3)
	return ids
}

func findDecodeBench() (string, error) { return findBench("keel-decode-bench") }

// findBench finds a compiled reference beside the shim (make setup builds them into build/).
func findBench(name string) (string, error) {
	shim, err := torch.Load()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(shim.Path), name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("C++ reference %s not found: run `make setup` (or pass --no-reference)", p)
	}
	return p, nil
}

func runDecodeBench(bin string, c *model.Config, promptLen, n, threads int) (float64, error) {
	args := []string{strconv.Itoa(c.HiddenSize), strconv.Itoa(c.IntermediateSize), strconv.Itoa(c.NumHiddenLayers),
		strconv.Itoa(c.NumAttentionHeads), strconv.Itoa(c.NumKeyValueHeads), strconv.Itoa(c.VocabSize),
		strconv.Itoa(promptLen), strconv.Itoa(n)}
	if threads > 0 {
		args = append(args, strconv.Itoa(threads))
	}
	out, err := runReference(bin, []string{"tokens_per_s"}, args...)
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(out["tokens_per_s"], 64)
}

// runReference runs a compiled reference and returns the KEY=VALUE lines it printed, failing with its output when
// it fails or leaves out one of the keys it must print.
func runReference(bin string, keys []string, args ...string) (map[string]string, error) {
	raw, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", bin, err, strings.TrimSpace(string(raw)))
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			out[k] = v
		}
	}
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("%s printed no %s: %s", bin, k, raw)
		}
	}
	return out, nil
}

func ratio(keel, ref float64, unit string) figure {
	r := 0.0
	if ref > 0 {
		r = keel / ref
	}
	return figure{Keel: keel, Reference: ref, Ratio: r, Unit: unit}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// printFigures ends a benchmark: one JSON object with --json, else one `NAME: keel X UNIT, reference Y UNIT,
// ratio R` line per figure (after notes on what each reference is).
func printFigures(w io.Writer, figs map[string]figure, order []string, asJSON bool, notes map[string]string) error {
	if asJSON {
		enc := json.NewEncoder(w)
		return enc.Encode(figs)
	}
	var keys []string
	for k := range notes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "# %s: %s\n", k, notes[k])
	}
	for _, name := range order {
		f := figs[name]
		fmt.Fprintf(w, "%s: keel %.2f %s, reference %.2f %s, ratio %.3f\n", name, f.Keel, f.Unit, f.Reference, f.Unit, f.Ratio)
	}
	return nil
}

func sqrt64(x float64) float64 { return math.Sqrt(x) }
