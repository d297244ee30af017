package bench

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/train"
)

// runBenchTrain times keel's SFT step against the same step in C++ on libtorch (engine/torch/csrc/bench), in
// one run, interleaved.
func runBenchTrain(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	batch := fs.Int("batch", 8, "sequences per step")
	seq := fs.Int("seq-len", 64, "tokens per sequence")
	steps := fs.Int("steps", 10, "timed steps per run")
	reps := fs.Int("reps", 3, "interleaved runs of each (the median counts)")
	threads := fs.Int("threads", 0, "libtorch CPU threads (0 = default), for the reference too")
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	worker := fs.Bool("worker", false, "run keel's steps once and print tokens_per_s (the child whose peak memory the bench reads)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	if *threads > 0 {
		rt.SetNumThreads(*threads)
	}
	if *worker {
		tps, err := train.BenchSFTStep(rt, benchShapes()["5m"], *batch, *seq, *steps)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "tokens_per_s=%g\n", tps)
		return nil
	}
	bin := filepath.Join(filepath.Dir(rt.Path), "keel-train-bench")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("C++ reference %s not found: run `make setup`", bin)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := benchShapes()["5m"]
	refArgs := []string{strconv.Itoa(cfg.HiddenSize), strconv.Itoa(cfg.IntermediateSize), strconv.Itoa(cfg.NumHiddenLayers), strconv.Itoa(cfg.NumAttentionHeads),
		strconv.Itoa(cfg.NumKeyValueHeads), strconv.Itoa(cfg.VocabSize), strconv.Itoa(*batch), strconv.Itoa(*seq), strconv.Itoa(*steps)}
	keelArgs := []string{"bench", "train", "--worker", "--batch", strconv.Itoa(*batch), "--seq-len", strconv.Itoa(*seq), "--steps", strconv.Itoa(*steps)}
	if *threads > 0 {
		refArgs = append(refArgs, strconv.Itoa(*threads))
		keelArgs = append(keelArgs, "--threads", strconv.Itoa(*threads))
	}
	// Each run is a process of its own, keel's as the C++ reference's, so both peak memories are a whole
	// process's: the model, the optimizer's state, the activations the backward pass holds, the allocator's slack.
	var keel, ref, keelPeak, refPeak []float64
	for r := 0; r < *reps; r++ {
		tps, peak, err := runStepBench(self, keelArgs)
		if err != nil {
			return err
		}
		keel, keelPeak = append(keel, tps), append(keelPeak, peak)
		if tps, peak, err = runStepBench(bin, refArgs); err != nil {
			return err
		}
		ref, refPeak = append(ref, tps), append(refPeak, peak)
	}
	figs := map[string]figure{
		"train_5m":      ratio(median(keel), median(ref), "tok/s"),
		"train_peak_5m": ratio(median(keelPeak), median(refPeak), "MiB"),
	}
	return printFigures(stdout, figs, []string{"train_5m", "train_peak_5m"}, *asJSON, map[string]string{
		"train": fmt.Sprintf("SFT step (forward, loss, backward, clip, AdamW), 5.4M Llama, batch %d x %d tokens; reference = a plain C++ loop on libtorch running the same step (engine/torch/csrc/bench/train_bench.cpp, one warm-up step before the clock, as keel's); peak = the process's peak resident memory (getrusage), each in a process of its own", *batch, *seq),
	})
}

// runStepBench runs a benchmark child that prints tokens_per_s=X and returns X and the child's peak resident
// memory in MiB.
func runStepBench(bin string, args []string) (float64, float64, error) {
	cmd := exec.Command(bin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %v: %s", bin, err, out)
	}
	var tps float64
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "tokens_per_s="); ok {
			tps, err = strconv.ParseFloat(v, 64)
			found = err == nil
		}
	}
	if !found {
		return 0, 0, fmt.Errorf("%s printed %q, no tokens_per_s", bin, out)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, 0, fmt.Errorf("%s: no resource usage on this system", bin)
	}
	return tps, float64(ru.Maxrss) / 1024, nil // Linux reports kilobytes
}
