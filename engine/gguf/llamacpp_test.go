package gguf_test

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/gguf"
	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/model/modeltest"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/tokenizer/tokenizertest"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/internal/conformance"
)

func llamacppDir(t testing.TB) string { return conformance.Dir(t, "llamacpp", "node-llama-cpp") }

type llamaOut struct {
	Positions [][][][2]float64 `json:"positions"`
	Tokenized [][]int          `json:"tokenized"`
	Seconds   float64          `json:"seconds"`
}

func runLlamaCpp(t testing.TB, ggufPath string, seqs [][]int, texts ...string) llamaOut {
	dir := llamacppDir(t)
	tmp := t.TempDir()
	in, out := filepath.Join(tmp, "in.json"), filepath.Join(tmp, "out.json")
	raw, _ := json.Marshal(map[string]any{"sequences": seqs, "top": 20, "texts": texts})
	os.WriteFile(in, raw, 0o644)
	cmd := exec.Command("node", filepath.Join(dir, "topk.mjs"), ggufPath, in, out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("llama.cpp: %v\n%s", err, msg)
	}
	var res llamaOut
	b, _ := os.ReadFile(out)
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// compare checks keel's log-probabilities against llama.cpp's top-20 at every position: top-1 agreement and
// the largest |difference| over llama.cpp's top 20.
func compare(t *testing.T, name string, m *model.Model, seqs [][]int, ref llamaOut, positions int, hooks *model.Hooks) (float64, float64) {
	agree, total := 0, 0
	maxDiff := 0.0
	V := m.Config.VocabSize
	for si, seq := range seqs {
		logits, err := m.Logits(seq, hooks)
		if err != nil {
			t.Fatal(err)
		}
		for p := 0; p < len(seq) && p < positions; p++ {
			row := logits[p*V : (p+1)*V]
			lse := logSumExp(row)
			best := 0
			for i := range row {
				if row[i] > row[best] {
					best = i
				}
			}
			top := ref.Positions[si][p]
			if len(top) == 0 {
				t.Fatalf("%s: llama.cpp returned nothing at position %d", name, p)
			}
			if int(top[0][0]) == best {
				agree++
			}
			total++
			for _, e := range top {
				d := math.Abs((float64(row[int(e[0])]) - lse) - e[1])
				maxDiff = math.Max(maxDiff, d)
			}
		}
	}
	return float64(agree) / float64(total), maxDiff
}

func logSumExp(xs []float32) float64 {
	m := math.Inf(-1)
	for _, x := range xs {
		m = math.Max(m, float64(x))
	}
	s := 0.0
	for _, x := range xs {
		s += math.Exp(float64(x) - m)
	}
	return m + math.Log(s)
}

func seqsFor(vocab, n, length int) [][]int {
	var out [][]int
	x := uint64(12345)
	for i := 0; i < n; i++ {
		s := []int{1}
		for len(s) < length {
			x = x*6364136223846793005 + 1442695040888963407
			s = append(s, 3+int(x>>33)%(vocab-3))
		}
		out = append(out, s)
	}
	return out
}

func TestStories260KAgainstLlamaCpp(t *testing.T) {
	lm := modeltest.Stories(t)
	path := filepath.Join(t.TempDir(), "stories.gguf")
	if err := gguf.ExportModel(lm.Model, lm.Tokenizer, path, gguf.GGMLF32); err != nil {
		t.Fatal(err)
	}
	text := "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
	seqs := [][]int{lm.Tokenizer.Encode(text, true), seqsFor(512, 1, 128)[0]}
	ref := runLlamaCpp(t, path, seqs)
	top1, diff := compare(t, "stories260K", lm.Model, seqs, ref, 1<<30, nil)
	t.Logf("stories260K: top-1 agreement %.4f, max |logprob diff| over llama.cpp's top 20 %.2g", top1, diff)
	if top1 < 0.99 || diff > 1e-3 {
		t.Fatalf("stories260K disagrees with llama.cpp: top-1 %.4f, max diff %g", top1, diff)
	}
}

// Every architecture, random weights, exported to an f32 GGUF with a synthetic vocabulary: keel and llama.cpp
// agree on 4 x 128 positions. Two configs differ from model.TinyConfigs where llama.cpp cannot follow: Mistral's
// window is widened beyond the sequence (llama.cpp runs Mistral as Llama, without a sliding window) and Gemma 2's
// and Gemma 3's query_pre_attn_scalar equals head_dim (llama.cpp derives the query scale from the model size).
func TestEveryArchitectureAgainstLlamaCpp(t *testing.T) {
	rt := torchtest.Runtime(t)
	configs := model.TinyConfigs()
	wide := 4096
	configs["mistral"].SlidingWindow = &wide
	configs["gemma2"].QueryPreAttnScalar = float64(configs["gemma2"].HeadDim)
	configs["gemma3"].QueryPreAttnScalar = float64(configs["gemma3"].HeadDim)
	names := make([]string, 0, len(configs))
	for n := range configs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			m, err := model.NewRandom(rt, configs[name], model.Options{}, 11)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			path := filepath.Join(t.TempDir(), name+".gguf")
			if err := gguf.ExportModel(m, nil, path, gguf.GGMLF32); err != nil {
				t.Fatal(err)
			}
			seqs := seqsFor(m.Config.VocabSize, 4, 128)
			ref := runLlamaCpp(t, path, seqs)
			top1, diff := compare(t, name, m, seqs, ref, 1<<30, nil)
			t.Logf("%s: top-1 agreement %.4f over 512 positions, max |logprob diff| %.2g", name, top1, diff)
			limit := 1e-3
			if m.Spec.Act == "gelu_tanh" {
				// ggml's CPU GELU reads an f16 lookup table (GGML_GELU_FP16 in ggml-cpu/vec.h): input and output
				// rounded to f16. keel's exact GELU is checked against transformers on the device; here keel
				// rounds as ggml does. The table is a step function, so an input one float32 rounding away from a
				// step's edge lands on the other side, and a summation order different from ggml's moves inputs
				// that far: the floor is keel against itself with every gate weight nudged by 2e-7 (1-2 rounding
				// steps). For the SiLU models that floor is ~2e-6; for Gemma 2 and 3 it was 0.8e-3 and 1.2e-3
				// on 2026-12-03, and llama.cpp's gap 0.8e-3 and 1.3e-3: keel disagrees with llama.cpp as much as
				// llama.cpp would with itself summing in another order. Exact GELU (4.3e-3 on Gemma 3) fails.
				exact := diff
				if exact > 5e-3 {
					t.Fatalf("%s: exact GELU max |logprob diff| %g over the f16 table's 5e-3", name, exact)
				}
				m.Spec.Act = "gelu_tanh_f16"
				top1, diff = compare(t, name, m, seqs, ref, 1<<30, nil)
				_, floor := compare(t, name, m, seqs, nudgedTop20(t, m, seqs), 1<<30, nil)
				t.Logf("%s with ggml's f16 GELU: top-1 agreement %.4f, max |logprob diff| %.2g (exact GELU: %.2g; keel against itself nudged: %.2g)", name, top1, diff, exact, floor)
				limit = math.Min(math.Max(limit, 1.5*floor), 2e-3)
			}
			if top1 < 0.99 || diff > limit {
				t.Fatalf("%s disagrees with llama.cpp: top-1 %.4f, max diff %g", name, top1, diff)
			}
		})
	}
}

// A model with a byte-level BPE tokenizer (keel's trainer's) exports with its vocabulary and merges: llama.cpp
// tokenizes text exactly as keel does and agrees on the forward pass.
func TestTrainedTokenizerExportsToLlamaCpp(t *testing.T) {
	rt := torchtest.Runtime(t)
	corpus := strings.Repeat("The quick brown fox jumps over the lazy dog. It's 2026; they'll see 12345 tokens.\n<|im_start|>user\nHi<|im_end|>\n", 50)
	tj, tc, err := tokenizer.Train(strings.NewReader(corpus), tokenizer.TrainConfig{VocabSize: 320})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), tj, 0o644)
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), tc, 0o644)
	tok, err := tokenizer.LoadHF(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.NewRandom(rt, model.TinyConfigs()["llama"], model.Options{}, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	path := filepath.Join(dir, "m.gguf")
	if err := gguf.ExportModel(m, tok, path, gguf.GGMLF32); err != nil {
		t.Fatal(err)
	}
	texts := []string{"The quick brown fox.", "It's 2026; they'll see 12345 tokens.", "<|im_start|>user\nHi<|im_end|>\n", "naïve café 日本 🙂", "  spaces\tand\nlines  "}
	seqs := [][]int{tok.Encode(texts[1], false)}
	ref := runLlamaCpp(t, path, seqs, texts...)
	for i, text := range texts {
		if got := tok.Encode(text, false); !equalInts(got, ref.Tokenized[i]) {
			t.Errorf("%q: keel %v, llama.cpp %v", text, got, ref.Tokenized[i])
		}
	}
	top1, diff := compare(t, "trained", m, seqs, ref, 1<<30, nil)
	if top1 < 0.99 || diff > 1e-3 {
		t.Fatalf("forward disagrees: top-1 %.4f, max diff %g", top1, diff)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type llamaText struct {
	Completions  []string `json:"completions"`
	ChatTemplate *string  `json:"chatTemplate"`
	ChatWrapper  *string  `json:"chatWrapper"`
	Chats        []string `json:"chats"`
}

// runLlamaText asks llama.cpp (conformance/llamacpp/complete.mjs) for greedy text completions and chat renders.
func runLlamaText(t testing.TB, ggufPath string, req map[string]any) llamaText {
	dir := llamacppDir(t)
	tmp := t.TempDir()
	in, out := filepath.Join(tmp, "in.json"), filepath.Join(tmp, "out.json")
	raw, _ := json.Marshal(req)
	os.WriteFile(in, raw, 0o644)
	if msg, err := exec.Command("node", filepath.Join(dir, "complete.mjs"), ggufPath, in, out).CombinedOutput(); err != nil {
		t.Fatalf("llama.cpp: %v\n%s", err, msg)
	}
	var res llamaText
	b, _ := os.ReadFile(out)
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// The path a user takes with an exported file: text in, llama.cpp's greedy text out, equal to keel's continuation
// of the same prompt. Token-id checks alone missed pieces spelled with a space where llama.cpp looks for "▁".
func TestStories260KTextCompletionMatchesLlamaCpp(t *testing.T) {
	lm := modeltest.Stories(t)
	path := filepath.Join(t.TempDir(), "stories.gguf")
	if err := gguf.ExportModel(lm.Model, lm.Tokenizer, path, gguf.GGMLF32); err != nil {
		t.Fatal(err)
	}
	prompts := []string{"Once upon a time", "One day, Lily went to the park", "The little dog was sad because", "Tom and his mom"}
	const n = 64
	ref := runLlamaText(t, path, map[string]any{"prompts": prompts, "maxTokens": n})
	for i, p := range prompts {
		res, err := lm.GenerateText(context.Background(), [][]int{lm.Tokenizer.Encode(p, true)}, model.TextConfig{GenerateConfig: model.GenerateConfig{MaxTokens: n}})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Text != ref.Completions[i] {
			t.Errorf("%q:\n keel      %q\n llama.cpp %q", p, res[0].Text, ref.Completions[i])
		}
		if len(res[0].Text) < 100 {
			t.Errorf("%q: a continuation of %d bytes is too short to compare", p, len(res[0].Text))
		}
	}
}

// exportWithReferenceTokenizer exports a one-layer random Llama with a reference tokenizer (tokenizertest.Models)
// as an f32 GGUF: what llama.cpp needs to read the vocabulary and the chat template.
func exportWithReferenceTokenizer(t *testing.T, rt *torch.Runtime, name string) (*tokenizer.HF, string) {
	tok, err := tokenizer.LoadHF(tokenizertest.ModelDir(t, name))
	if err != nil {
		t.Fatal(err)
	}
	cfg := *model.TinyConfigs()["llama"]
	cfg.VocabSize, cfg.HiddenSize, cfg.IntermediateSize, cfg.NumHiddenLayers = tok.VocabSize(), 16, 32, 1
	cfg.NumAttentionHeads, cfg.NumKeyValueHeads = 2, 1
	m, err := model.NewRandom(rt, &cfg, model.Options{}, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	path := filepath.Join(t.TempDir(), name+".gguf")
	if err := gguf.ExportModel(m, tok, path, gguf.GGMLF32); err != nil {
		t.Fatal(err)
	}
	return tok, path
}

// SentencePiece-style tokenizer.json vocabularies (Llama 2's, Gemma 3's) export as llama.cpp's "llama" vocabulary:
// llama.cpp's own tokenization of the conformance strings equals keel's.
func TestSentencePieceVocabulariesExportToLlamaCpp(t *testing.T) {
	rt := torchtest.Runtime(t)
	corpus := tokenizertest.Corpus(600)
	for _, name := range []string{"llama2", "gemma3"} {
		t.Run(name, func(t *testing.T) {
			tok, path := exportWithReferenceTokenizer(t, rt, name)
			ref := runLlamaCpp(t, path, [][]int{}, corpus...)
			fails := 0
			for i, text := range corpus {
				if got := tok.Encode(text, false); !equalInts(got, ref.Tokenized[i]) {
					if fails++; fails <= 10 {
						t.Errorf("%q: keel %v, llama.cpp %v", text, got, ref.Tokenized[i])
					}
				}
			}
			t.Logf("%s: %d of %d strings tokenized differently", name, fails, len(corpus))
		})
	}
}

// A model's chat template travels in the GGUF: llama.cpp reads tokenizer.chat_template, node-llama-cpp resolves a
// chat format from it, and the template renders conversations as keel renders them.
func TestChatTemplateTravelsToLlamaCpp(t *testing.T) {
	rt := torchtest.Runtime(t)
	tok, path := exportWithReferenceTokenizer(t, rt, "llama3")
	// Chats end with a user turn (node-llama-cpp adds the generation prompt) and assistant turns carry no edge
	// spaces (node-llama-cpp splices model responses in after rendering, so a template's trim does not reach them).
	chats := [][]tokenizer.TemplateMessage{
		{{"role": "user", "content": "Hi"}},
		{{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Arr, a pirate."}, {"role": "user", "content": "Prove it."}},
		{{"role": "user", "content": "naïve café 日本 🙂\n\nTwo lines."}, {"role": "assistant", "content": "Fine."}, {"role": "user", "content": "<|eot_id|> as text"}},
	}
	ref := runLlamaText(t, path, map[string]any{"chats": chats})
	if ref.ChatTemplate == nil || *ref.ChatTemplate != tok.ChatTemplates["default"] {
		t.Fatalf("llama.cpp read no chat template, or a different one")
	}
	if ref.ChatWrapper == nil {
		t.Fatalf("node-llama-cpp resolved no chat format from the exported template")
	}
	for i, chat := range chats {
		want, err := tok.ApplyChatTemplate(chat, tokenizer.ChatOptions{AddGenerationPrompt: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := ref.Chats[i]; got != want {
			t.Errorf("chat %d:\n keel      %q\n llama.cpp %q", i, want, got)
		}
	}
}

// nudgedTop20 is keel's own top 20 at every position, in llamaOut's form, with every gate weight multiplied by
// 1 + 2e-7 (one or two float32 rounding steps): the disagreement a reference would show from summing the same
// products in another order.
func nudgedTop20(t *testing.T, m *model.Model, seqs [][]int) llamaOut {
	nudge := func(f float64) {
		s := m.RT.NewScope().NoGrad()
		defer s.Close()
		for _, l := range m.Layers {
			s.CopyInto(l.Gate, s.MulScalar(l.Gate, f))
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
	}
	nudge(1 + 2e-7)
	defer nudge(1 / (1 + 2e-7))
	var out llamaOut
	V := m.Config.VocabSize
	for _, seq := range seqs {
		logits, err := m.Logits(seq, nil)
		if err != nil {
			t.Fatal(err)
		}
		var perPos [][][2]float64
		for p := range seq {
			row := logits[p*V : (p+1)*V]
			lse := logSumExp(row)
			ids := make([]int, V)
			for i := range ids {
				ids[i] = i
			}
			sort.Slice(ids, func(a, b int) bool { return row[ids[a]] > row[ids[b]] })
			var top [][2]float64
			for _, id := range ids[:20] {
				top = append(top, [2]float64{float64(id), float64(row[id]) - lse})
			}
			perPos = append(perPos, top)
		}
		out.Positions = append(out.Positions, perPos)
	}
	return out
}
