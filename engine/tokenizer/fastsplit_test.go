package tokenizer

import (
	"github.com/keel-lab/keel/engine/tokenizer/tokenizertest"
	"strings"
	"testing"
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
