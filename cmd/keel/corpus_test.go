package main

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/train"
)

func TestCorpusGenerateBadInput(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "corpus.jsonl")
	os.WriteFile(out, []byte("kept\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"corpus", "generate", "--out", out, "--roles", "pirate,plumber"}, `unknown role "plumber"`},
		{[]string{"corpus", "generate", "--out", out, "--role-qa", "-5"}, "--role-qa -5"},
		{[]string{"corpus", "generate", "--out", out, "--turns", "40"}, "--turns 40"},
		{[]string{"corpus", "generate", "--out", out, "--vaults", "lots"}, "vaults"},
		{[]string{"corpus", "generate"}, "--out"},
		{[]string{"corpus", "mix"}, `unknown subcommand "mix"`},
	} {
		code, _, stderr := runKeel(c.args...)
		if code != 2 || !strings.Contains(stderr, c.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and one line with %q", c.args, code, stderr, c.want)
		}
	}
	if raw, _ := os.ReadFile(out); string(raw) != "kept\n" {
		t.Errorf("a failed run changed the existing file: %q", raw)
	}
}

// The whole path from corpus to a trainable model: generate, train the tokenizer on it, init a model whose first
// loss is ln(vocab), and load the corpus as chat examples with loss on assistant tokens only.
func TestCorpusTokenizerAndModelInit(t *testing.T) {
	torchtest.Runtime(t)
	dir := t.TempDir()
	corpus := filepath.Join(dir, "corpus.jsonl")
	code, stdout, stderr := runKeel("corpus", "generate", "--seed", "3", "--out", corpus, "--assistant-qa", "40", "--role-qa", "80", "--conversations", "10", "--vaults", "10", "--recalls", "0")
	if code != 0 {
		t.Fatalf("corpus generate: %s", stderr)
	}
	if !strings.Contains(stdout, "170 chats") {
		t.Fatalf("corpus generate printed %q", stdout)
	}
	text := filepath.Join(dir, "text.txt")
	f, _ := os.Open(corpus)
	var sb strings.Builder
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct{ Messages []struct{ Content string } }
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		for _, m := range rec.Messages {
			sb.WriteString(m.Content + "\n")
		}
	}
	f.Close()
	os.WriteFile(text, []byte(sb.String()), 0o644)
	tokDir := filepath.Join(dir, "tok")
	if code, _, stderr := runKeel("tokenizer", "train", "--vocab", "512", "--corpus", text, "--out", tokDir); code != 0 {
		t.Fatalf("tokenizer train: %s", stderr)
	}
	modelDir := filepath.Join(dir, "model")
	code, stdout, stderr = runKeel("model", "init", "--tokenizer", tokDir, "--out", modelDir, "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate", "128")
	if code != 0 {
		t.Fatalf("model init: %s", stderr)
	}
	code, info, stderr := runKeel("model", "info", "--model", modelDir)
	if code != 0 || !strings.Contains(info, "sha256:") || !strings.Contains(info, "parameters:") {
		t.Fatalf("model info: exit %d %q %s", code, info, stderr)
	}
	cfg, err := model.ReadConfig(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "parameters") || cfg.VocabSize != 512 {
		t.Fatalf("model init printed %q, vocab %d", stdout, cfg.VocabSize)
	}
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	examples, err := train.LoadDataset(corpus, tok)
	if err != nil {
		t.Fatal(err)
	}
	if len(examples) != 170 {
		t.Fatalf("%d examples from 170 chats", len(examples))
	}
	rt := torchtest.Runtime(t)
	lm, err := model.Load(rt, modelDir, model.Options{Device: torch.CPU})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	ids := examples[0].IDs
	logits, err := lm.Logits(ids[:len(ids)-1], nil)
	if err != nil {
		t.Fatal(err)
	}
	// Mean next-token cross-entropy over the sequence.
	const vocab = 512
	loss := 0.0
	for pos := 0; pos < len(ids)-1; pos++ {
		row := logits[pos*vocab : (pos+1)*vocab]
		lse := 0.0
		for _, l := range row {
			lse += math.Exp(float64(l))
		}
		loss += math.Log(lse) - float64(row[ids[pos+1]])
	}
	loss /= float64(len(ids) - 1)
	if want := math.Log(512); math.Abs(loss-want) > 0.1 {
		t.Errorf("first loss %.3f, want about ln(vocab) = %.3f", loss, want)
	}

	// The eval's JSON carries the figures the protocol names, fractions in [0,1], one drift rate per turn.
	code, stdout, stderr = runKeel("eval", "persona", "--model", modelDir, "--json", "--roles", "pirate,chef", "--questions", "2",
		"--conversations", "2", "--turns", "3", "--jailbreaks", "2", "--max-tokens", "6")
	if code != 0 {
		t.Fatalf("eval persona: %s", stderr)
	}
	var rep struct {
		RoleFidelity        *float64             `json:"role_fidelity"`
		Drift               map[string][]float64 `json:"drift"`
		Capability          *float64             `json:"capability"`
		JailbreakCompliance map[string]float64   `json:"jailbreak_compliance"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("eval persona --json printed %q: %v", stdout, err)
	}
	if rep.RoleFidelity == nil || rep.Capability == nil || len(rep.JailbreakCompliance) != 2 || len(rep.Drift) != 4 {
		t.Fatalf("eval persona --json: %s", stdout)
	}
	fractions := []float64{*rep.RoleFidelity, *rep.Capability, rep.JailbreakCompliance["role"], rep.JailbreakCompliance["none"]}
	for _, d := range []string{"coding", "writing", "therapy", "philosophy"} {
		if len(rep.Drift[d]) != 3 {
			t.Fatalf("drift %s: %v, want 3 turns", d, rep.Drift[d])
		}
		fractions = append(fractions, rep.Drift[d]...)
	}
	for _, f := range fractions {
		if f < 0 || f > 1 {
			t.Fatalf("figure %v outside [0,1]: %s", f, stdout)
		}
	}
}
