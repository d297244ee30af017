package tokenizer

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/keel-lab/keel/engine/tokenizer/tokenizertest"
)

type referenceOut struct {
	Encode []struct {
		IDs     []int  `json:"ids"`
		Decoded string `json:"decoded"`
	} `json:"encode"`
	Chat []struct {
		Text  *string `json:"text"`
		Error *string `json:"error"`
	} `json:"chat"`
	Seconds float64 `json:"seconds"`
}

// reference runs transformers.js (conformance/tokenizers/reference.mjs) on the request.
func reference(t testing.TB, model string, req any) referenceOut {
	t.Helper()
	dir := tokenizertest.Dir(t)
	tmp := t.TempDir()
	in, out := filepath.Join(tmp, "in.json"), filepath.Join(tmp, "out.json")
	raw, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", filepath.Join(dir, "reference.mjs"), model, in, out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("node reference.mjs %s: %v\n%s", model, err, msg)
	}
	var res referenceOut
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func loadConformance(t testing.TB, model string) *HF {
	t.Helper()
	tk, err := LoadHF(tokenizertest.ModelDir(t, model))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func equalIDs(a, b []int) bool {
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

func TestConformanceWithTransformersJS(t *testing.T) {
	corpus := tokenizertest.Corpus(3200)
	for _, model := range tokenizertest.Models {
		t.Run(model, func(t *testing.T) {
			tk := loadConformance(t, model)
			ref := reference(t, model, map[string]any{"strings": corpus})
			if len(ref.Encode) != len(corpus) {
				t.Fatalf("reference returned %d results for %d strings", len(ref.Encode), len(corpus))
			}
			idFails, textFails, streamFails := 0, 0, 0
			for i, s := range corpus {
				ids := tk.Encode(s, true)
				if !equalIDs(ids, ref.Encode[i].IDs) {
					if idFails < 5 {
						t.Errorf("%q:\n keel %v\n ref  %v", s, ids, ref.Encode[i].IDs)
					}
					idFails++
					continue
				}
				if len(ids) == 0 {
					continue
				}
				if got := tk.Decode(ids); got != ref.Encode[i].Decoded {
					if textFails < 5 {
						t.Errorf("decode %q:\n keel %q\n ref  %q", s, got, ref.Encode[i].Decoded)
					}
					textFails++
				}
				// The stream never emits broken UTF-8 and, without the special tokens, ends with the text itself.
				st := NewStream(tk)
				var streamed string
				for _, id := range ids {
					piece := st.Next(id)
					if !utf8.ValidString(piece) {
						t.Fatalf("%q: stream emitted invalid UTF-8 %q", s, piece)
					}
					streamed += piece
				}
				streamed += st.Flush()
				if plain := tk.DecodeRaw(ids); streamed != plain {
					if streamFails < 5 {
						t.Errorf("stream %q:\n got  %q\n want %q", s, streamed, plain)
					}
					streamFails++
				}
			}
			t.Logf("%d strings: %d id mismatches, %d decode mismatches, %d stream mismatches", len(corpus), idFails, textFails, streamFails)
			if idFails+textFails+streamFails > 0 {
				t.Fail()
			}
		})
	}
}
