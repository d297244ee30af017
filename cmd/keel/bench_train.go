package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/train"
)

// runBenchTrain times keel's SFT step against the same step in C++ on libtorch (engine/torch/csrc/bench), in
// one run, interleaved.
func runBenchTrain(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench train", stderr)
	batch := fs.Int("batch", 8, "sequences per step")
	seq := fs.Int("seq-len", 64, "tokens per sequence")
	steps := fs.Int("steps", 10, "timed steps per run")
	reps := fs.Int("reps", 3, "interleaved runs of each (the median counts)")
	threads := fs.Int("threads", 0, "libtorch CPU threads (0 = default), for the reference too")
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	if err := parse(fs, args); err != nil {
		return err
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	if *threads > 0 {
		rt.SetNumThreads(*threads)
	}
	bin := filepath.Join(filepath.Dir(rt.Path), "keel-train-bench")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("C++ reference %s not found: run `make setup`", bin)
	}
	cfg := benchShapes()["5m"]
	var keel, ref []float64
	for r := 0; r < *reps; r++ {
		tps, err := train.BenchSFTStep(rt, cfg, *batch, *seq, *steps)
		if err != nil {
			return err
		}
		keel = append(keel, tps)
		a := []string{strconv.Itoa(cfg.HiddenSize), strconv.Itoa(cfg.IntermediateSize), strconv.Itoa(cfg.NumHiddenLayers), strconv.Itoa(cfg.NumAttentionHeads),
			strconv.Itoa(cfg.NumKeyValueHeads), strconv.Itoa(cfg.VocabSize), strconv.Itoa(*batch), strconv.Itoa(*seq), strconv.Itoa(*steps)}
		if *threads > 0 {
			a = append(a, strconv.Itoa(*threads))
		}
		out, err := exec.Command(bin, a...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", bin, err, out)
		}
		v, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "tokens_per_s=")
		f, perr := strconv.ParseFloat(v, 64)
		if !ok || perr != nil {
			return fmt.Errorf("%s printed %q", bin, out)
		}
		ref = append(ref, f)
	}
	figs := map[string]figure{"train_5m": ratio(median(keel), median(ref), "tok/s")}
	return printFigures(stdout, figs, []string{"train_5m"}, *asJSON, map[string]string{
		"train": fmt.Sprintf("SFT step (forward, loss, backward, clip, AdamW), 5.4M Llama, batch %d x %d tokens; reference = a plain C++ loop on libtorch running the same step (engine/torch/csrc/bench/train_bench.cpp, one warm-up step before the clock, as keel's)", *batch, *seq),
	})
}
