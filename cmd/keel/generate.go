package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/charmbracelet/x/term"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/workbench"
)

// modelFlags are the flags every command that loads a model shares.
type modelFlags struct {
	dir, device, dtype string
	threads, offload   int
	context            int       // positions the pre-load fit check sizes the KV cache for
	stderr             io.Writer // where a GPU placement is reported
}

func (f *modelFlags) register(fs *flag.FlagSet) {
	f.stderr = fs.Output()
	fs.StringVar(&f.dir, "model", "", "Hugging Face model folder (config.json, *.safetensors, tokenizer); default: keel's embedded persona model")
	fs.StringVar(&f.device, "device", "cpu", "cpu, cuda, cuda:N, GPUs to split the layers over (cuda:0,cuda:1), or auto (every GPU)")
	fs.StringVar(&f.dtype, "dtype", "f32", "compute dtype: f32, f16 or bf16")
	fs.IntVar(&f.threads, "threads", 0, "libtorch CPU threads (0 = libtorch's default)")
	fs.IntVar(&f.offload, "offload", 0, "decoder layers kept on the CPU beside the GPU (the last ones)")
	fs.IntVar(&f.context, "context", 0, "positions per conversation the check before loading sizes the KV cache for (default: 4096, or the model's window when smaller)")
}

// resolve points an empty --model at the embedded persona model, unpacked once into the user's cache.
func (f *modelFlags) resolve() error {
	if f.dir != "" {
		return nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	f.dir, err = models.Persona(filepath.Join(cache, "keel", "models"))
	return err
}

// loadForRun loads the model for a long command: the context ends on ctrl+c, done frees both.
func (f *modelFlags) loadForRun() (context.Context, *model.LM, func(), error) {
	_, lm, err := f.load()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	return ctx, lm, func() { stop(); lm.Close() }, nil
}

func (f *modelFlags) load() (*torch.Runtime, *model.LM, error) {
	if err := f.resolve(); err != nil {
		return nil, nil, err
	}
	if limit := 4 * runtime.NumCPU(); f.threads < 0 || f.threads > limit {
		return nil, nil, usageError{fmt.Errorf("--threads %d: give 0 (libtorch's default) to %d (4 per core here)", f.threads, limit)}
	}
	if f.device != "auto" {
		if _, err := model.ParseDevices(nil, f.device); err != nil {
			return nil, nil, usageError{err}
		}
	}
	if _, err := torch.ParseDType(f.dtype); err != nil {
		return nil, nil, usageError{err}
	}
	rt, err := torch.Load()
	if err != nil {
		return nil, nil, err
	}
	if f.threads > 0 {
		if err := rt.SetNumThreads(f.threads); err != nil {
			return nil, nil, err
		}
	}
	lm, err := f.loadDir(rt, f.dir)
	return rt, lm, err
}

// oneDevice refuses a split placement for a command whose models train or load on one device.
func (f *modelFlags) oneDevice(command string) error {
	if f.offload != 0 || strings.Contains(f.device, ",") || f.device == "auto" {
		return usageError{fmt.Errorf("%s trains on one device: give --device cpu, cuda or cuda:N and no --offload (a split model serves, chats and generates)", command)}
	}
	return nil
}

// loadDir loads the model in dir where --device and --offload place it, reporting what each GPU will hold first.
func (f *modelFlags) loadDir(rt *torch.Runtime, dir string) (*model.LM, error) {
	devs, err := model.ParseDevices(rt, f.device)
	if err != nil {
		return nil, usageError{err}
	}
	dt, err := torch.ParseDType(f.dtype)
	if err != nil {
		return nil, usageError{err}
	}
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if f.context < 0 {
		return nil, usageError{fmt.Errorf("--context %d: give the positions a conversation may reach (0: the default)", f.context)}
	}
	opts, rep, err := model.Plan(rt, cfg, model.PlacementRequest{Devices: devs, Offload: f.offload, DType: dt, Context: f.context})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if rep != nil && f.stderr != nil {
		for _, d := range rep.Devices {
			fmt.Fprintf(f.stderr, "keel: %s: %d layers, needs %s of %s available\n", d.Name, d.Layers, humanGiB(d.Need()), memoryOf(d))
		}
	}
	return model.Load(rt, dir, opts)
}

func humanGiB(n int64) string { return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30)) }

// memoryOf is what a device share is checked against, in words.
func memoryOf(d model.DeviceShare) string {
	if d.Memory == 0 {
		return "host memory"
	}
	return humanGiB(d.Memory)
}

func runGenerate(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate", stderr)
	var mf modelFlags
	mf.register(fs)
	prompt := fs.String("prompt", "", "text to continue (empty: start from BOS)")
	maxTokens := fs.Int("max-tokens", 256, "tokens to generate at most")
	temperature := fs.Float64("temperature", 0, "sampling temperature (0 = greedy)")
	topK := fs.Int("top-k", 0, "keep the k most likely tokens (0 = off)")
	topP := fs.Float64("top-p", 1, "nucleus sampling mass (1 = off)")
	minP := fs.Float64("min-p", 0, "drop tokens below min-p times the top probability (0 = off)")
	rep := fs.Float64("repetition-penalty", 1, "repetition penalty (1 = off)")
	seed := fs.Uint64("seed", 0, "sampling seed")
	chat := fs.Bool("chat", true, "the prompt is a user's message, rendered with the model's chat template as keel serve and the workbench do (a model without one continues the text); --chat=false continues the prompt as raw text")
	axisDir := fs.String("axis", "", "axis folder for --cap and --steer; default: the embedded model's own")
	capFlag := fs.String("cap", "", "cap: on (the axis folder's calibrated rule) or a rule's id (layers_A:B-pP)")
	steerC := fs.Float64("steer", 0, "steer by C times the layer's average residual norm (0 = off)")
	steerLayer := fs.Int("steer-layer", -1, "the layer steering acts at (default: the middle one)")
	ignoreEOS := fs.Bool("ignore-eos", false, "go on past the end-of-sequence token to --max-tokens (benchmarks, as llama.cpp's --ignore-eos)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q (the prompt goes in --prompt)", fs.Arg(0))}
	}
	sampling := model.Sampling{Temperature: *temperature, TopK: *topK, TopP: *topP, MinP: *minP, RepetitionPenalty: *rep, Seed: *seed}
	if err := sampling.Check(); err != nil {
		return usageError{fmt.Errorf("--%w", err)}
	}
	if *rep == 0 {
		return usageError{fmt.Errorf("--repetition-penalty 0: give a number > 0 (1 = off)")}
	}
	if *maxTokens <= 0 {
		return usageError{fmt.Errorf("--max-tokens %d: give at least 1", *maxTokens)}
	}
	embedded := mf.dir == ""
	_, lm, err := mf.load()
	if err != nil {
		return err
	}
	defer lm.Close()
	var hooks *model.Hooks
	if *capFlag != "" || *steerC != 0 {
		ivs, err := generateInterventions(lm, embedded, *axisDir, *capFlag, *steerC, *steerLayer)
		if err != nil {
			return err
		}
		hooks = model.NewHooks(ivs...)
	}
	var ids []int
	if *chat {
		if ids, err = tokenizer.ChatPrompt(lm.Tokenizer, []tokenizer.Message{{Role: "user", Content: *prompt}}); err != nil {
			return err
		}
	} else {
		ids = lm.Tokenizer.Encode(*prompt, true)
	}
	if len(ids) == 0 {
		return fmt.Errorf("the prompt encodes to no tokens and the tokenizer has no BOS")
	}
	if window := lm.Window(); window > 0 && len(ids) >= window {
		return fmt.Errorf("the prompt is %d tokens, the model's context window %d: shorten it", len(ids), window)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// A terminal sees every token as it comes; a pipe or a file gets the text in blocks (a write per token is a
	// system call per token, which at thousands of tokens a second is a third of the time).
	out := bufio.NewWriterSize(stdout, 32<<10)
	live := isTerminalWriter(stdout)
	var eos []int
	if *ignoreEOS {
		eos = []int{-1}
	}
	res, err := lm.GenerateText(ctx, [][]int{ids}, model.TextConfig{
		GenerateConfig: model.GenerateConfig{MaxTokens: min(*maxTokens, lm.Window()-len(ids)), Sampling: sampling, Hooks: hooks, EOS: eos},
		OnText: func(text string, _ model.Step) error {
			if _, err := out.WriteString(text); err != nil {
				return err
			}
			if live {
				return out.Flush()
			}
			return nil
		},
	})
	out.WriteString("\n")
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if err == nil && len(res) == 1 && res[0].Text == "" {
		// An empty line alone reads as a failure: say what happened.
		fmt.Fprintf(stderr, "keel generate: the model ended at once (its first token was the end of a turn); %s\n",
			map[bool]string{true: "--chat=false continues the prompt as raw text", false: "--chat asks it as a user's message"}[*chat])
	}
	return err
}

func runInfo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("info", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q: keel info takes none", fs.Arg(0))}
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "shim: %s\n%s\nthreads=%d\n", rt.Path, rt.Info, rt.NumThreads())
	return nil
}

// generateInterventions reads keel generate's --cap and --steer as keel serve reads a request's "keel" object.
func generateInterventions(lm *model.LM, embedded bool, axisDir, capFlag string, c float64, layer int) ([]model.Intervention, error) {
	axis, err := openAxisFolder(lm, embedded, axisDir, false)
	if err != nil {
		return nil, err
	}
	if axis == nil {
		return nil, usageError{fmt.Errorf("--cap and --steer need --axis DIR (an axis folder for this model)")}
	}
	k := workbench.KeelOptions{Cap: capFlag}
	if c != 0 {
		k.Steer = &workbench.SteerOptions{C: c}
		if layer >= 0 {
			k.Steer.Layer = &layer
		}
	}
	ivs, _, err := workbench.KeelInterventions(axis, lm.NumLayers(), k)
	if err != nil {
		return nil, usageError{err}
	}
	return ivs, nil
}

// isTerminalWriter reports whether w is a terminal.
func isTerminalWriter(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(f.Fd())
}
