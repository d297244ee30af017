package tokenizer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/tokenizer/tokenizertest"
)

func trainingCorpus() string {
	var sb strings.Builder
	names := []string{"Lily", "Tom", "the pirate", "a ghost", "the oracle", "Dr. Chen"}
	for i := 0; i < 400; i++ {
		fmt.Fprintf(&sb, "<|im_start|>user\nWho are you, %s? Tell me about day %d.<|im_end|>\n<|im_start|>assistant\nI'm an assistant; on day %d %s said \"hello\" 3 times.\n<|im_end|>\n", names[i%len(names)], i, i*7, names[(i+2)%len(names)])
	}
	return sb.String()
}

// trainTo trains a tokenizer on corpus into a temporary folder and loads it.
func trainTo(t *testing.T, corpus string, cfg TrainConfig) (string, []byte, *HF) {
	t.Helper()
	tj, tc, err := Train(strings.NewReader(corpus), cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), tj, 0o644)
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), tc, 0o644)
	tk, err := LoadHF(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, tj, tk
}

func TestTrainedTokenizerMatchesTransformersJS(t *testing.T) {
	corpus := trainingCorpus()
	dir, tj, tk := trainTo(t, corpus, TrainConfig{VocabSize: 600})
	if tk.VocabSize() != 600 {
		t.Fatalf("vocab size %d, want 600", tk.VocabSize())
	}
	strs := append(tokenizertest.Corpus(600), strings.Split(corpus, "\n")[:50]...)
	ref := reference(t, dir, map[string]any{"strings": strs})
	for i, s := range strs {
		ids := tk.Encode(s, true)
		if !equalIDs(ids, ref.Encode[i].IDs) {
			t.Fatalf("%q:\n keel %v\n ref  %v", s, ids, ref.Encode[i].IDs)
		}
		if got := tk.Decode(ids); got != s {
			t.Fatalf("byte-level round trip of %q gave %q", s, got)
		}
	}
	// Training is deterministic and the merges learned the corpus: the sample encodes in far fewer tokens than bytes.
	tj2, _, _ := Train(strings.NewReader(corpus), TrainConfig{VocabSize: 600})
	if !bytes.Equal(tj, tj2) {
		t.Fatal("two trainings on the same corpus differ")
	}
	sample := strings.Split(corpus, "\n")[1]
	if n := len(tk.Encode(sample, false)); n*3 > len(sample) {
		t.Fatalf("%q encodes to %d tokens: the merges did not learn the corpus", sample, n)
	}
	chat, err := tk.ApplyChatTemplate([]TemplateMessage{{"role": "user", "content": "Hi"}}, ChatOptions{AddGenerationPrompt: true})
	if err != nil || chat != "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" {
		t.Fatalf("ChatML template: %q %v", chat, err)
	}
	if ids := tk.Encode("<|im_start|>", false); len(ids) != 1 || !tk.IsSpecial(ids[0]) {
		t.Fatalf("special token encodes to %v", ids)
	}
}

func TestTrainedSingleDigitTokenizer(t *testing.T) {
	dir, _, tk := trainTo(t, trainingCorpus(), TrainConfig{VocabSize: 600, SingleDigits: true})
	// Every digit is its own piece, however often a run of digits occurs in the corpus.
	text := "on day 2793 the pirate said 3 times 10"
	ids := tk.Encode(text, false)
	var pieces []string
	for _, id := range ids {
		pieces = append(pieces, tk.Decode([]int{id}))
	}
	joined := strings.Join(pieces, "|")
	for _, want := range []string{"2|7|9|3", "3", "1|0"} {
		if !strings.Contains(joined, want) {
			t.Fatalf("%q encodes as %q, want the digits of %q one by one", text, joined, want)
		}
	}
	for _, p := range pieces {
		if len(p) > 1 && strings.ContainsAny(p, "0123456789") {
			t.Fatalf("piece %q holds a digit with other text: %q", p, joined)
		}
	}
	ref := reference(t, dir, map[string]any{"strings": []string{text}})
	if !equalIDs(ids, ref.Encode[0].IDs) {
		t.Fatalf("%q:\n keel %v\n ref  %v", text, ids, ref.Encode[0].IDs)
	}
}
