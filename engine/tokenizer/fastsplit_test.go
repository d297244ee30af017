package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keel-lab/keel/engine/tokenizer/tokenizertest"
)

func FuzzFastSplit(f *testing.F) {
	for _, s := range tokenizertest.Corpus(400) {
		f.Add(s)
	}
	f.Add("a\n \n  b  \r\n\t x'S'll 123456 ¹²³ ٣٤٥")
	scanners := map[string]splitScanner{}
	regexes := map[string]*jsRegex{}
	for src, sc := range fastSplitPatterns {
		re, err := compileJSRegex(src)
		if err != nil {
			f.Fatal(err)
		}
		scanners[src], regexes[src] = sc, re
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !strings.ContainsRune(s, 0xfffd) && !isValid(s) {
			return
		}
		for src, sc := range scanners {
			got, want := sc.split(s), regexes[src].split(s)
			if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
				t.Fatalf("%q (digits %d):\n scanner %q\n regex   %q", s, sc.digits, got, want)
			}
		}
	})
}

func isValid(s string) bool { return strings.ToValidUTF8(s, "") == s }

// Random byte tokens, as high-temperature sampling draws them, stream as valid UTF-8 that adds up to the
// whole-text decode (stray bytes as U+FFFD, one per maximal ill-formed subpart).
func TestStreamOfRandomBytesIsValidUTF8(t *testing.T) {
	tk := loadConformance(t, "llama2") // ids 3..258 are <0x00>..<0xFF>
	rng := rand.New(rand.NewPCG(5, 6))
	for trial := 0; trial < 200; trial++ {
		var ids []int
		var raw []byte
		for i := rng.IntN(40); i > 0; i-- {
			b := byte(rng.IntN(256))
			if rng.IntN(3) == 0 {
				b = 0x80 + byte(rng.IntN(64)) // continuation bytes, the usual strays
			}
			ids = append(ids, 3+int(b))
			raw = append(raw, b)
		}
		st := NewStreamAfter(tk, 3+'x') // mid-text: the decoder's start-of-text space strip stays out of it
		var got string
		for _, id := range ids {
			piece := st.Next(id)
			if !utf8.ValidString(piece) {
				t.Fatalf("%x: the stream emitted invalid UTF-8 %q", raw, piece)
			}
			got += piece
		}
		got += st.Flush()
		if want := decodeUTF8(raw); got != want {
			t.Fatalf("%x: streamed %q, whole-text decode %q", raw, got, want)
		}
	}
}
