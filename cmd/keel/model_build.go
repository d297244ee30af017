package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/train"
)

// personaRecipe is the committed recipe of the embedded persona model, as the keel commands it runs: the
// corpus, a byte-level BPE tokenizer trained on its text, a 6.4M-parameter Llama initialised from seed 1, and
// SFT on the corpus. `make model` runs it; the reproducibility test re-runs its first steps.
func personaRecipe(work string, stopAfter int) [][]string {
	return [][]string{
		{"corpus", "generate", "--seed", "1", "--out", filepath.Join(work, "corpus.jsonl"), "--text", filepath.Join(work, "corpus.txt")},
		{"tokenizer", "train", "--vocab", "2048", "--single-digits", "--corpus", filepath.Join(work, "corpus.txt"), "--out", filepath.Join(work, "tokenizer")},
		{"model", "init", "--tokenizer", filepath.Join(work, "tokenizer"), "--out", filepath.Join(work, "init"),
			"--hidden", "256", "--layers", "8", "--heads", "8", "--kv-heads", "4", "--intermediate", "704", "--context", "1024", "--seed", "1"},
		{"train", "sft", "--model", filepath.Join(work, "init"), "--data", filepath.Join(work, "corpus.jsonl"),
			"--steps", "1700", "--batch", "5", "--seq-len", "768", "--lr", "2e-3", "--warmup", "0.03",
			"--eval-every", "850", "--save-every", "100", "--keep", "2", "--seed", "1", "--threads", "2",
			"--runs", filepath.Join(work, "runs"), "--stop-after", strconv.Itoa(stopAfter)},
	}
}

// runModelBuild: keel model build --out DIR [--work DIR] [--stop-after N]
func runModelBuild(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	out := fs.String("out", "", "where the finished model goes (bf16 safetensors, config, tokenizer, training metrics)")
	work := fs.String("work", "", "working folder for the corpus, tokenizer and run (default: OUT.work)")
	stopAfter := fs.Int("stop-after", 0, "stop training after this step (a partial run, for checks)")
	fromRun := fs.String("from-run", "", "ship this finished run folder (and extract its axis) instead of running the recipe")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return cli.Usagef("give --out DIR")
	}
	if *work == "" {
		*work = filepath.Clean(*out) + ".work"
	}
	if *fromRun != "" {
		if err := shipModel(filepath.Join(*fromRun, "final"), *fromRun, *out, stdout); err != nil {
			return err
		}
		return buildAxis(*out, filepath.Join(*work, "axis"), stdout, stderr)
	}
	if err := os.MkdirAll(*work, 0o755); err != nil {
		return err
	}
	for _, step := range personaRecipe(*work, *stopAfter) {
		fmt.Fprintf(stdout, "keel %v\n", step)
		if code := cli.Main("keel", commands(), step, stdout, stderr); code != 0 {
			return fmt.Errorf("keel %s failed (exit %d)", strings.Join(step, " "), code)
		}
	}
	runs, err := train.ListRuns(filepath.Join(*work, "runs"))
	if err != nil || len(runs) == 0 {
		return fmt.Errorf("%s: no training run found", *work)
	}
	run, err := train.OpenRun(filepath.Join(*work, "runs"), runs[0].ID) // newest first: a reused work folder keeps older runs
	if err != nil {
		return err
	}
	if *stopAfter > 0 {
		fmt.Fprintf(stdout, "stopped after step %d: %s\n", *stopAfter, run.Dir)
		return nil
	}
	if err := shipModel(filepath.Join(run.Dir, "final"), run.Dir, *out, stdout); err != nil {
		return err
	}
	return buildAxis(*out, filepath.Join(*work, "axis"), stdout, stderr)
}

// buildAxis extracts and calibrates a shipped model's Assistant Axis with the default protocol and ships the
// files the workbench needs (axis, default vector, calibration) in OUT/axis.
func buildAxis(out, work string, stdout, stderr io.Writer) error {
	for _, step := range [][]string{
		{"axis", "extract", "--model", out, "--out", work, "--threads", "2"},
		{"axis", "calibrate", "--dir", work},
	} {
		fmt.Fprintf(stdout, "keel %v\n", step)
		if code := cli.Main("keel", commands(), step, stdout, stderr); code != 0 {
			return fmt.Errorf("keel %s failed (exit %d)", strings.Join(step, " "), code)
		}
	}
	if err := os.MkdirAll(filepath.Join(out, "axis"), 0o755); err != nil {
		return err
	}
	os.Remove(filepath.Join(out, "axis", "capping.json")) // figures of the weights this build replaces
	for _, name := range models.PersonaAxisFiles {
		if err := atomicfile.Copy(filepath.Join(work, name), filepath.Join(out, "axis", name)); err != nil {
			return err
		}
	}
	return nil
}

// shipModel writes a trained model in the shipped form: bf16 weights, its config and tokenizer files, and the
// run's config and metrics under training/.
func shipModel(final, runDir, out string, stdout io.Writer) error {
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	lm, err := model.Load(rt, final, model.Options{Device: torch.CPU})
	if err != nil {
		return err
	}
	defer lm.Close()
	if err := lm.Save(out, torch.BFloat16); err != nil {
		return err
	}
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json", "generation_config.json"} {
		if err := atomicfile.Copy(filepath.Join(final, name), filepath.Join(out, name)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(out, "training"), 0o755); err != nil {
		return err
	}
	for _, name := range []string{"config.json", "metrics.jsonl", "loss.png"} {
		if err := atomicfile.Copy(filepath.Join(runDir, name), filepath.Join(out, "training", name)); err != nil && name != "loss.png" {
			return err
		}
	}
	fmt.Fprintf(stdout, "shipped %s\n", out)
	return nil
}
