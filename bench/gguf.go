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

	"github.com/keel-lab/keel/engine/gguf"
	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
)

// runBenchGGUF times greedy decoding of keel against llama.cpp (node-llama-cpp) on the same random model (f32,
// exported to GGUF), the same prompt and the same thread count, in one run.
func runBenchGGUF(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	shapes := fs.String("shape", "5m,llama-1b", "shapes: 5m, llama-1b")
	tokens := fs.String("tokens", "5m=128,llama-1b=16", "decode steps per shape")
	threads := fs.Int("threads", 2, "threads for both")
	reps := fs.Int("reps", 3, "interleaved runs (median)")
	conf := fs.String("conformance", "conformance/llamacpp", "folder with decode.mjs and node_modules")
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	steps, err := perShape(*tokens)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	rt.SetNumThreads(*threads)
	tmp, err := os.MkdirTemp("", "keel-bench-gguf")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	figs := map[string]figure{}
	var order []string
	for _, name := range strings.Split(*shapes, ",") {
		cfg, ok := benchShapes()[name]
		if !ok {
			return cli.Usagef("unknown shape %q", name)
		}
		n := steps[name]
		if n == 0 {
			n = 32
		}
		m, err := model.NewRandom(rt, cfg, model.Options{}, 42)
		if err != nil {
			return err
		}
		path := filepath.Join(tmp, name+".gguf")
		if err := gguf.ExportModel(m, nil, path, gguf.GGMLF32); err != nil {
			m.Close()
			return err
		}
		prompt := []int{1}
		for len(prompt) < 16 {
			prompt = append(prompt, 3+(len(prompt)*7919)%(cfg.VocabSize-3))
		}
		var ps []string
		for _, id := range prompt {
			ps = append(ps, strconv.Itoa(id))
		}
		var keel, ref []float64
		for r := 0; r < *reps; r++ {
			tps, err := decodeRate(m, nil, len(prompt), n, 1, false)
			if err != nil {
				m.Close()
				return err
			}
			keel = append(keel, tps)
			out, err := exec.Command("node", filepath.Join(*conf, "decode.mjs"), path, strings.Join(ps, ","), strconv.Itoa(n), strconv.Itoa(*threads)).CombinedOutput()
			if err != nil {
				m.Close()
				return fmt.Errorf("llama.cpp decode: %v: %s (run `npm ci --omit=optional` in %s)", err, out, *conf)
			}
			v, ok := strings.CutPrefix(strings.TrimSpace(lastLine(string(out))), "tokens_per_s=")
			f, perr := strconv.ParseFloat(v, 64)
			if !ok || perr != nil {
				m.Close()
				return fmt.Errorf("llama.cpp decode printed %q", out)
			}
			ref = append(ref, f)
		}
		m.Close()
		os.Remove(path)
		figs["llamacpp_"+name] = ratio(median(keel), median(ref), "tok/s")
		order = append(order, "llamacpp_"+name)
	}
	return printFigures(stdout, figs, order, *asJSON, map[string]string{
		"llamacpp": fmt.Sprintf("greedy decode, f32, %d threads; reference = llama.cpp via node-llama-cpp 3.21.1 on the exported GGUF (f32 KV cache, no flash attention)", *threads),
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
