package gguf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sample(t testing.TB) []byte {
	path := filepath.Join(t.TempDir(), "x.gguf")
	data := make([]byte, 24)
	for i := range data {
		data[i] = byte(i)
	}
	err := Write(path, []KV{{"general.architecture", "llama"}, {"llama.block_count", uint32(2)}, {"tokenizer.ggml.tokens", []string{"a", "b"}},
		{"tokenizer.ggml.scores", []float32{0, -1}}, {"x.flag", true}}, []Tensor{{Name: "w", Shape: []int64{2, 3}, Type: GGMLF32, Data: data}, {Name: "h", Shape: []int64{3}, Type: GGMLF16, Data: data[:6]}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	f, err := Parse(sample(t))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Get("llama.block_count"); v != uint32(2) {
		t.Fatalf("block_count %v", v)
	}
	if v, _ := f.Get("tokenizer.ggml.tokens"); len(v.([]string)) != 2 {
		t.Fatalf("tokens %v", v)
	}
	w, ok := f.Tensor("w")
	if !ok || w.Shape[0] != 2 || w.Shape[1] != 3 || w.Data[23] != 23 {
		t.Fatalf("tensor w %+v", w)
	}
	if h, _ := f.Tensor("h"); len(h.Data) != 6 {
		t.Fatalf("tensor h %+v", h)
	}
}

func TestTruncatedAndCorrupt(t *testing.T) {
	b := sample(t)
	for _, n := range []int{3, 20, len(b) / 2, len(b) - 30} {
		if _, err := Parse(b[:n]); err == nil {
			t.Errorf("truncated at %d parsed", n)
		}
	}
	bad := append([]byte("GGUX"), b[4:]...)
	if _, err := Parse(bad); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Errorf("bad magic: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		Parse(b)
	})
}
