package provider

import (
	"os"
	"path/filepath"
	"testing"
)

// A cache file of any content opens: lines that are not answers are skipped and counted, never a panic.
func FuzzOpenCache(f *testing.F) {
	f.Add([]byte(`{"key":"a","text":"hi","finish_reason":"stop"}` + "\n" + `{"key":"b","te`))
	f.Add([]byte("\n\n{}\n[1,2]\n\"x\"\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		path := filepath.Join(t.TempDir(), "answers.jsonl")
		os.WriteFile(path, raw, 0o644)
		c, err := OpenCache(path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.put("k", Reply{Text: "new"}); err != nil {
			t.Fatal(err)
		}
		again, err := OpenCache(path)
		if err != nil {
			t.Fatal(err)
		}
		defer again.Close()
		if r, ok := again.get("k"); !ok || r.Text != "new" {
			t.Fatalf("an answer added after %q was lost", raw)
		}
	})
}

func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:8000/v1#m", "https://x#a/b", "#", "http://#", "http://x/v1#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		e, err := ParseEndpoint(ref)
		if err == nil && (e.Model == "" || e.BaseURL == "") {
			t.Fatalf("%q parsed as %+v", ref, e)
		}
	})
}
