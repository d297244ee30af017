package probes

import "testing"

// The table holds the paper's figures (analysis layers Gemma 22/46, Qwen 32/64, Llama 40/80; best caps Qwen
// layers_46:54-p0.25, Llama layers_56:72-p0.25), every row's cap fits its model, and a model is found by its id,
// its release folder or a path into the Hugging Face cache.
func TestPaperModels(t *testing.T) {
	rows := PaperModels()
	if len(rows) < 3 {
		t.Fatalf("%d rows", len(rows))
	}
	for _, m := range rows {
		if m.TargetLayer <= 0 || m.TargetLayer >= m.Layers {
			t.Errorf("%s: layer %d of %d", m.ID, m.TargetLayer, m.Layers)
		}
		if m.Cap != "" {
			r, err := ParseCapID(m.Cap)
			if err != nil || r.Check(m.Layers) != nil || r.P != 0.25 {
				t.Errorf("%s: cap %s: %v", m.ID, m.Cap, err)
			}
		}
	}
	for name, want := range map[string]string{
		"Qwen/Qwen3-32B": "32 layers_46:54-p0.25", "qwen/qwen3-32b": "32 layers_46:54-p0.25", "qwen-3-32b": "32 layers_46:54-p0.25",
		"/data/vectors/llama-3.3-70b": "40 layers_56:72-p0.25", "google/gemma-2-27b-it": "22 ",
		"/root/.cache/huggingface/hub/models--meta-llama--Llama-3.3-70B-Instruct/snapshots/abc": "40 layers_56:72-p0.25",
	} {
		m, ok := PaperModelFor(name)
		if got := itoa(m.TargetLayer) + " " + m.Cap; !ok || got != want {
			t.Errorf("%s: %q %v, want %q", name, got, ok, want)
		}
	}
	for _, name := range []string{"", "persona", "Qwen/Qwen3-8B", "/models/other"} {
		if m, ok := PaperModelFor(name); ok {
			t.Errorf("%q found %+v", name, m)
		}
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	s := ""
	for ; n > 0; n /= 10 {
		s = string(rune('0'+n%10)) + s
	}
	return s
}
