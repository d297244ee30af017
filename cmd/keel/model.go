package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/probes"
)

// runModelInit: keel model init --tokenizer DIR --out DIR [shape]: a random-weight Llama sized by a trained tokenizer.
func runModelInit(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	tokDir := fs.String("tokenizer", "", "folder with tokenizer.json and tokenizer_config.json (its vocabulary sizes the model)")
	out := fs.String("out", "", "output model folder")
	hidden := fs.Int("hidden", 256, "hidden size (d_model)")
	layers := fs.Int("layers", 6, "decoder layers")
	heads := fs.Int("heads", 8, "attention heads")
	kvHeads := fs.Int("kv-heads", 4, "key/value heads (grouped-query attention)")
	inter := fs.Int("intermediate", 704, "MLP intermediate size")
	ctx := fs.Int("context", 512, "max_position_embeddings")
	tied := fs.Bool("tied", true, "tie the embedding and the output head")
	seed := fs.Uint64("seed", 0, "seed of the random initialisation")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *tokDir == "" || *out == "" {
		return cli.Usagef("give --tokenizer DIR and --out DIR")
	}
	vocab, bos, eos, err := tokenizerShape(*tokDir)
	if err != nil {
		return err
	}
	cfg := model.NewLlamaConfig(model.LlamaShape{Hidden: *hidden, Intermediate: *inter, Layers: *layers, Heads: *heads,
		KVHeads: *kvHeads, Vocab: vocab, Context: *ctx, Tied: *tied}, bos, eos)
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	params, err := cfg.Parameters()
	if err != nil {
		return err
	}
	m, err := model.NewTrainable(rt, cfg, model.Options{Device: torch.CPU}, *seed)
	if err != nil {
		return cli.Usagef("model shape: %w", err)
	}
	defer m.Close()
	if err := m.Save(*out, torch.Float32); err != nil {
		return err
	}
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json"} {
		if err := atomicfile.Copy(filepath.Join(*tokDir, name), filepath.Join(*out, name)); err != nil {
			return err
		}
	}
	gen, _ := json.MarshalIndent(map[string]any{"eos_token_id": eos, "do_sample": true, "temperature": 0.7, "top_p": 0.9}, "", "  ")
	if err := atomicfile.Write(filepath.Join(*out, "generation_config.json"), func(f *os.File) error { _, err := f.Write(append(gen, '\n')); return err }); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: LlamaForCausalLM, %d parameters (vocab %d, d_model %d, %d layers)\n", *out, params, vocab, *hidden, *layers)
	return nil
}

// tokenizerShape reads the vocabulary size and the ChatML end token from a trained tokenizer.
func tokenizerShape(dir string) (vocab int, bos *int, eos int, err error) {
	tok, err := tokenizer.LoadHF(dir)
	if err != nil {
		return 0, nil, 0, fmt.Errorf("%w (train one with `keel tokenizer train`)", err)
	}
	eos, ok := tok.TokenID("<|im_end|>")
	if !ok {
		return 0, nil, 0, fmt.Errorf("%s: no <|im_end|> token: keel's persona models use ChatML (train with `keel tokenizer train`)", filepath.Join(dir, "tokenizer.json"))
	}
	return tok.VocabSize(), nil, eos, nil
}

// runModelFit: keel model fit --model DIR [--dtype bf16] [--context N] [--batch B] [--gpu-memory 80GB,80GB]
// [--offload N] [--json]: what the model needs on each device, from config.json alone (no weights are read).
func runModelFit(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	dir := fs.String("model", "", "the model: a folder (only config.json is read), a Hugging Face id ORG/NAME[@REVISION] or persona")
	dtype := fs.String("dtype", "bf16", "weights and compute dtype: f32, f16 or bf16")
	context := fs.Int("context", 0, "positions the KV cache holds per row (default: the model's max_position_embeddings)")
	batch := fs.Int("batch", 1, "rows decoded together")
	gpus := fs.String("gpu-memory", "", "memory of each GPU, e.g. 80GB,80GB (GB = GiB; empty: the CPU alone)")
	offload := fs.Int("offload", 0, "decoder layers kept on the CPU")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return cli.Usagef("--model is required: a folder with config.json, a Hugging Face id or persona")
	}
	folder, err := cli.ResolveModel(*dir, stderr)
	if err != nil {
		return err
	}
	cfg, err := model.ReadConfig(folder)
	if err != nil {
		return err
	}
	dt, err := torch.ParseDType(*dtype)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	if *context == 0 {
		*context = cfg.MaxPositionEmbeddings
	}
	mems, err := parseMemories(*gpus)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	rep, err := cfg.EstimateFit(model.FitOptions{DTypeBytes: dt.Size(), Context: *context, Batch: *batch, GPUs: mems, Offload: *offload})
	if err != nil {
		return cli.UsageError{Err: err}
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(rep)
	}
	fmt.Fprintf(stdout, "%s: %d parameters, %s of %s weights; KV cache %s (%d positions x %d rows)\n",
		cfg.Architecture(), rep.Parameters, cli.HumanGiB(rep.WeightBytes), dt, cli.HumanGiB(rep.KVBytes), *context, *batch)
	for _, d := range rep.Devices {
		fmt.Fprintf(stdout, "  %-7s %3d layers  weights %s  KV %s  activations %s  reserve %s  = %s of %s\n",
			d.Name, d.Layers, cli.HumanGiB(d.Weights), cli.HumanGiB(d.KVCache), cli.HumanGiB(d.Activations), cli.HumanGiB(d.Reserve), cli.HumanGiB(d.Need()), cli.MemoryOf(d))
	}
	if !rep.Fits {
		fmt.Fprintf(stdout, "does not fit: %s\n", rep.Advice)
		return nil
	}
	fmt.Fprintln(stdout, "fits")
	return nil
}

// parseMemories reads --gpu-memory: sizes like 80GB, 24GiB, 40960MB, comma-separated (GB and MB count 2^30 and
// 2^20 bytes, as GPU memory is quoted).
func parseMemories(s string) ([]int64, error) {
	if s == "" {
		return nil, nil
	}
	var out []int64
	for _, part := range strings.Split(s, ",") {
		p := strings.ToUpper(strings.TrimSpace(part))
		unit := int64(1)
		for _, u := range []struct {
			suffix string
			n      int64
		}{{"GIB", 1 << 30}, {"GB", 1 << 30}, {"G", 1 << 30}, {"MIB", 1 << 20}, {"MB", 1 << 20}, {"M", 1 << 20}} {
			if strings.HasSuffix(p, u.suffix) {
				p, unit = strings.TrimSuffix(p, u.suffix), u.n
				break
			}
		}
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) || v > 1<<20 {
			return nil, fmt.Errorf("bad --gpu-memory %q: sizes like 80GB,80GB", s)
		}
		out = append(out, int64(v*float64(unit)))
	}
	return out, nil
}

// runModelInfo prints a model folder's architecture, size and the sha256 of each weight file.
func runModelInfo(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var mf cli.ModelFlags
	mf.Register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	embedded := mf.Dir == "" || mf.Dir == models.PersonaName
	if err := mf.Resolve(); err != nil {
		return err
	}
	dir := &mf.Dir
	if embedded {
		fmt.Fprintf(stdout, "embedded:   keel's persona model (sha256 %s)\n", models.PersonaSHA256())
	}
	cfg, err := model.ReadConfig(*dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "model:      %s\narch:       %s (d_model %d, %d layers, %d heads, %d kv heads, vocab %d)\n",
		*dir, cfg.Architecture(), cfg.HiddenSize, cfg.NumHiddenLayers, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.VocabSize)
	if cfg.Architecture() == "LlamaForCausalLM" {
		if n, err := cfg.Parameters(); err == nil {
			fmt.Fprintf(stdout, "parameters: %d\n", n)
		}
	}
	if m, ok := probes.PaperModelFor(*dir); ok && m.Layers == cfg.NumHiddenLayers {
		cap := m.Cap
		if cap == "" {
			cap = "none calibrated"
		}
		fmt.Fprintf(stdout, "paper:      %s in the Assistant Axis paper: analysis layer %d, cap %s\n", m.ID, m.TargetLayer, cap)
	}
	files, _ := filepath.Glob(filepath.Join(*dir, "*.safetensors"))
	sort.Strings(files)
	for _, f := range files {
		// A file cut short or not safetensors at all is named, not hashed as if it were weights.
		st, err := safetensors.Open(f)
		if err != nil {
			return err
		}
		st.Close()
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(raw)
		fmt.Fprintf(stdout, "sha256:     %s  %s (%d bytes)\n", hex.EncodeToString(sum[:]), filepath.Base(f), len(raw))
	}
	return nil
}

// runModelList: keel model list: the models --model can name without a path: the embedded one, and each model
// repository in the Hugging Face cache with its architecture (whether keel runs it) and size.
func runModelList(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if err := cli.NoArgs(fs); err != nil {
		return err
	}
	persona, err := models.Resolve(models.PersonaName, cli.KeelModelCache(), nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-44s %-34s %10s  %s\n", "NAME", "ARCHITECTURE", "SIZE", "FOLDER")
	row := func(name, dir string, bytes int64) {
		arch := "no config.json"
		if dir != "" {
			if cfg, err := model.ReadConfig(dir); err != nil {
				arch = "unreadable config.json"
			} else if _, err := model.SpecFor(cfg); err != nil && !cfg.IsClassifier() {
				arch = cfg.Architecture() + " (not supported)"
			} else {
				arch = cfg.Architecture()
			}
		}
		fmt.Fprintf(stdout, "%-44s %-34s %10s  %s\n", name, arch, humanBytes(bytes), dir)
	}
	row(models.PersonaName+" (embedded)", persona, folderBytes(persona))
	hub := models.HubCacheDir()
	cached, err := models.ListCache(hub)
	if err != nil {
		return fmt.Errorf("the Hugging Face cache %s: %w", hub, err)
	}
	for _, m := range cached {
		row(m.ID.String(), m.Snapshot, m.Bytes)
	}
	if len(cached) == 0 {
		fmt.Fprintf(stdout, "(no models in the Hugging Face cache %s)\n", hub)
	}
	return nil
}

// folderBytes is the size of the regular files in dir.
func folderBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d iofs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d KiB", (n+1023)/1024)
	}
}

// runPull: keel pull ORG/NAME[@REVISION]...: fetch what keel loads of each model into the Hugging Face cache,
// without loading it.
func runPull(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return cli.Usagef("give a model id: keel pull ORG/NAME[@REVISION]")
	}
	for _, ref := range fs.Args() {
		id, ok := models.ParseHubID(ref)
		if !ok {
			return cli.Usagef("%q is not a Hugging Face id: give ORG/NAME[@REVISION]", ref)
		}
		pull := models.NewPuller()
		pull.Progress = cli.ProgressBar(stderr, "pull "+id.String())
		dir, err := pull.Pull(context.Background(), id)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s\n", id, dir)
	}
	return nil
}
