package tokenizer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keel-lab/keel/engine/tokenizer/tokenizertest"
)

// FuzzEncodeDecode: Llama 3's tokenizer is lossless, so decode(encode(s)) == s for valid UTF-8; the streaming
// decoder never emits broken UTF-8 and adds up to the same text. Gemma 3's (byte fallback) must not panic.
func FuzzEncodeDecode(f *testing.F) {
	for _, s := range tokenizertest.Corpus(300) {
		f.Add(s)
	}
	llama3 := loadConformance(f, "llama3")
	gemma3 := loadConformance(f, "gemma3")
	f.Fuzz(func(t *testing.T, s string) {
		gemma3.Decode(gemma3.Encode(s, true))
		if !utf8.ValidString(s) {
			llama3.Encode(s, true)
			return
		}
		ids := llama3.Encode(s, false)
		if got := llama3.DecodeRaw(ids); got != s {
			t.Fatalf("decode(encode(%q)) = %q", s, got)
		}
		st := NewStream(llama3)
		var sb strings.Builder
		for _, id := range ids {
			p := st.Next(id)
			if !utf8.ValidString(p) {
				t.Fatalf("stream emitted invalid UTF-8 %q for %q", p, s)
			}
			sb.WriteString(p)
		}
		sb.WriteString(st.Flush())
		if sb.String() != s {
			t.Fatalf("stream of %q gave %q", s, sb.String())
		}
	})
}

func TestMalformedTokenizerFilesGiveClearErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct{ body, want string }{
		{"{\n\"model\": {\n\"type\": \"BPE\",\n\"vocab\": {\"a\": 0,}\n}\n}", "line 4"},
		{`{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}`, `model.type "Unigram"`},
		{`{"model": {"type": "BPE", "vocab": {}, "merges": []}}`, "model.vocab"},
		{`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["ab"]}}`, "model.merges[0]"},
		{`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}`, `"ab" is not in model.vocab`},
		{`{"model": {"type": "BPE", "vocab": {"a": 0, "ab": 1}, "merges": ["a b"]}}`, `"b" is not in model.vocab`},
		{`{"model": {"type": "BPE", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}}}`, "pre_tokenizer"},
		{`{"model": {"type": "BPE", "vocab": {"a": 0}}, "normalizer": {"type": "Precompiled"}}`, `normalizer type "Precompiled"`},
		{`{"model": {"type": "BPE", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated"}}`, "backtracks catastrophically"},
	}
	for _, c := range cases {
		write("tokenizer.json", c.body)
		_, err := LoadHF(dir)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "tokenizer.json") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s\n got %v, want one line naming tokenizer.json and %q", c.body, err, c.want)
		}
	}
	write("tokenizer.json", `{"model": {"type": "BPE", "vocab": {"a": 0}}}`)
	write("tokenizer_config.json", `{"chat_template": 7}`)
	if _, err := LoadHF(dir); err == nil || !strings.Contains(err.Error(), "chat_template") {
		t.Errorf("bad chat_template: %v", err)
	}
}
