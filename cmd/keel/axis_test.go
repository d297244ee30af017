package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/model/modeltest"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/steer"
	"github.com/keel-lab/keel/steer/ptfile"
)

func writePT(t *testing.T, path string, v any) {
	t.Helper()
	var buf bytes.Buffer
	if err := ptfile.Write(&buf, "archive", v); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The paper's files, written in torch.save's layout, import into keel's files: the axis as it was, and the
// role-ward capping ceilings as +axis floors that move every activation exactly as the paper's code would.
func TestAxisImportOfThePapersFiles(t *testing.T) {
	const L, D = 6, 10
	rng := rand.New(rand.NewPCG(1, 2))
	axis := make([]float32, L*D)
	for i := range axis {
		axis[i] = float32(rng.NormFloat64())
	}
	dir := filepath.Join(t.TempDir(), "qwen-3-32b")
	writePT(t, filepath.Join(dir, "assistant_axis.pt"), &ptfile.Tensor{Shape: []int64{L, D}, Data: axis})
	writePT(t, filepath.Join(dir, "role_vectors", "pirate.pt"), &ptfile.Tensor{Shape: []int64{L, D}, Data: axis})
	// Role-ward vectors at layers 2 and 3 (minus the axis there) of length 5, not 1, with ceilings.
	roleWard := func(l int) *ptfile.Tensor {
		v := axis[l*D : (l+1)*D]
		n := steer.Norm(v)
		out := make([]float32, D)
		for i := range out {
			out[i] = float32(-5 * float64(v[i]) / n)
		}
		return &ptfile.Tensor{Shape: []int64{D}, Data: out}
	}
	caps := map[int]float64{2: -1.875, 3: -0.22}
	writePT(t, filepath.Join(dir, "capping_config.pt"), map[string]any{
		"vectors": map[string]any{"v2": map[string]any{"vector": roleWard(2), "layer": 2}, "v3": map[string]any{"vector": roleWard(3), "layer": 3}},
		"experiments": []any{map[string]any{"id": "layers_2:4-p0.25", "interventions": []any{
			map[string]any{"vector": "v2", "cap": caps[2]}, map[string]any{"vector": "v3", "cap": caps[3]}}}},
	})
	out := filepath.Join(t.TempDir(), "imported")
	code, stdout, stderr := runKeel("axis", "import", filepath.Join(dir, "assistant_axis.pt"), filepath.Join(dir, "role_vectors", "pirate.pt"),
		filepath.Join(dir, "capping_config.pt"), "--out", out)
	if code != 0 {
		t.Fatalf("import: %s", stderr)
	}
	if strings.Count(stdout, "->") != 3 {
		t.Fatalf("import printed %q", stdout)
	}
	a, err := steer.LoadVectorFile(filepath.Join(out, "assistant_axis.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Model != "qwen-3-32b" || a.NLayers != L || a.DModel != D || a.Sign != steer.SignAssistant {
		t.Fatalf("axis header %+v", a.Header)
	}
	for l := 0; l < L; l++ {
		for i := 0; i < D; i++ {
			if a.Raw[l][i] != axis[l*D+i] {
				t.Fatalf("axis[%d][%d] = %v, file had %v", l, i, a.Raw[l][i], axis[l*D+i])
			}
		}
	}
	if _, err := steer.LoadVectorFile(filepath.Join(out, "role_vectors", "pirate.safetensors")); err != nil {
		t.Fatal(err)
	}
	c, err := steer.LoadVectorFile(filepath.Join(out, "caps", "layers_2:4-p0.25.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Operation != steer.OpCap || c.Percentile != 0.25 || len(c.Caps()) != 2 {
		t.Fatalf("cap header %+v", c.Header)
	}
	// The paper's ceiling on the normalised vector, h - max(<h,v/|v|> - cap, 0) v/|v|, against keel's floor
	// h - u min(<h,u> - tau, 0).
	for trial := 0; trial < 200; trial++ {
		for _, iv := range c.Caps() {
			raw := roleWard(iv.Layer).Data
			v := make([]float32, D)
			for i := range v {
				v[i] = float32(float64(raw[i]) / steer.Norm(raw))
			}
			h := make([]float32, D)
			for i := range h {
				h[i] = float32(3 * rng.NormFloat64())
			}
			paper := append([]float32(nil), h...)
			if ex := steer.Dot(h, v) - caps[iv.Layer]; ex > 0 {
				for i := range paper {
					paper[i] -= float32(ex) * v[i]
				}
			}
			keel := append([]float32(nil), h...)
			u := iv.Vectors[0]
			if short := steer.Dot(h, u) - iv.Tau; short < 0 {
				for i := range keel {
					keel[i] -= float32(short) * u[i]
				}
			}
			for i := range h {
				if math.Abs(float64(paper[i]-keel[i])) > 1e-4 {
					t.Fatalf("layer %d: paper's cap gives %v, keel's %v", iv.Layer, paper, keel)
				}
			}
		}
	}
	// An import never replaces a vector file silently.
	axisFile := filepath.Join(out, "assistant_axis.safetensors")
	before, _ := os.ReadFile(axisFile)
	code, _, stderr = runKeel("axis", "import", filepath.Join(dir, "role_vectors", "pirate.pt"), "--out", out, "--model-id", "other")
	if code != 1 || !strings.Contains(stderr, "exists: pass --force") {
		t.Fatalf("re-import over an existing file: exit %d, %q", code, stderr)
	}
	code, _, stderr = runKeel("axis", "import", filepath.Join(dir, "assistant_axis.pt"), "--out", out, "--model-id", "other")
	if after, _ := os.ReadFile(axisFile); code != 1 || string(after) != string(before) {
		t.Fatalf("the axis was replaced without --force: exit %d, %q", code, stderr)
	}
	if code, _, stderr = runKeel("axis", "import", filepath.Join(dir, "assistant_axis.pt"), "--out", out, "--force"); code != 0 {
		t.Fatalf("--force: %q", stderr)
	}
	// Caps need the model's depth: alone, the config of a model outside the paper's table is refused with the fix.
	code, _, stderr = runKeel("axis", "import", filepath.Join(dir, "capping_config.pt"), "--out", out, "--model-id", "other")
	if code == 0 || !strings.Contains(stderr, "--n-layers") {
		t.Fatalf("capping config alone: exit %d, %q", code, stderr)
	}
}

// The release's folder of a model in the paper's table imports under its Hugging Face id, and the import says
// the analysis layer and cap setting loading it will start at.
func TestAxisImportNamesThePapersModel(t *testing.T) {
	const L, D = 64, 4
	axis := make([]float32, L*D)
	for i := range axis {
		axis[i] = float32(i%7) - 3
	}
	dir := filepath.Join(t.TempDir(), "qwen-3-32b")
	writePT(t, filepath.Join(dir, "assistant_axis.pt"), &ptfile.Tensor{Shape: []int64{L, D}, Data: axis})
	out := filepath.Join(t.TempDir(), "imported")
	code, stdout, stderr := runKeel("axis", "import", filepath.Join(dir, "assistant_axis.pt"), "--out", out)
	if code != 0 || !strings.Contains(stdout, "Qwen/Qwen3-32B (the paper's table): analysis layer 32 of 64") || !strings.Contains(stdout, "layers_46:54-p0.25") {
		t.Fatalf("import: exit %d %q %s", code, stdout, stderr)
	}
	a, err := steer.LoadVectorFile(filepath.Join(out, "assistant_axis.safetensors"))
	if err != nil || a.Model != "Qwen/Qwen3-32B" {
		t.Fatalf("the header names %q: %v", a.Model, err)
	}
}

func TestAxisImportRefusesHostileFiles(t *testing.T) {
	dir := t.TempDir()
	var good bytes.Buffer
	ptfile.Write(&good, "archive", &ptfile.Tensor{Shape: []int64{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}})
	files := map[string][]byte{
		"truncated.pt": good.Bytes()[:good.Len()/2],
		"text.pt":      []byte("import os; os.system('rm -rf /')"),
	}
	var evil bytes.Buffer
	ptfile.Write(&evil, "archive", "x")
	// Swap the pickle for one that calls os.system: the reader must refuse the global, never run it.
	evilZip := bytes.Replace(evil.Bytes(), []byte("X\x01\x00\x00\x00x"), []byte("cos\nsystem\n"), 1)
	files["evil.pt"] = evilZip
	var vector bytes.Buffer
	ptfile.Write(&vector, "archive", &ptfile.Tensor{Shape: []int64{3}, Data: []float32{1, 2, 3}})
	files["vector.pt"] = vector.Bytes()
	var empty bytes.Buffer
	ptfile.Write(&empty, "archive", &ptfile.Tensor{Shape: []int64{0, 256}, Data: nil})
	files["empty.pt"] = empty.Bytes()
	for name, raw := range files {
		path := filepath.Join(dir, name)
		os.WriteFile(path, raw, 0o644)
		code, _, stderr := runKeel("axis", "import", path, "--out", filepath.Join(dir, "out"))
		if code == 0 || !strings.Contains(stderr, name) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("%s: exit %d, stderr %q: want one line naming the file", name, code, stderr)
		}
	}
}

// Extraction on the embedded model is resumable and repeatable: a kill -9 mid-run loses no finished role, the
// resumed run does not redo them, and the result equals an uninterrupted run's with the same seed.
func TestAxisExtractResumesAfterKill(t *testing.T) {
	torchtest.Runtime(t)
	args := []string{"axis", "extract", "--limit", "6", "--questions", "1", "--min-count", "1", "--max-tokens", "64", "--threads", "1"}
	killed := t.TempDir()
	cmd := keelCmd(append(args, "--out", killed)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	finished := func() []string {
		fs, _ := filepath.Glob(filepath.Join(killed, "rollouts", "*.jsonl"))
		return fs
	}
	deadline := time.After(3 * time.Minute)
wait:
	for len(finished()) < 2 {
		select {
		case err := <-done:
			t.Fatalf("extraction ended before it could be killed: %v", err)
		case <-deadline:
			cmd.Process.Kill()
			t.Fatal("no role finished in 3 minutes")
		case <-time.After(20 * time.Millisecond):
			continue wait
		}
	}
	cmd.Process.Kill() // SIGKILL: no chance to clean up
	<-done
	before := map[string]time.Time{}
	for _, f := range finished() {
		st, _ := os.Stat(f)
		before[f] = st.ModTime()
	}
	if len(before) >= 7 {
		t.Fatal("the extraction finished before the kill landed: nothing was tested")
	}
	code, _, stderr := runKeel(append(args, "--out", killed)...)
	if code != 0 {
		t.Fatalf("resumed extraction: %s", stderr)
	}
	for f, mt := range before {
		st, _ := os.Stat(f)
		if !st.ModTime().Equal(mt) {
			t.Errorf("%s was redone after the resume", filepath.Base(f))
		}
	}
	if n := len(finished()); n != 7 {
		t.Fatalf("%d roles after the resume, want the default Assistant and 6", n)
	}
	fresh := t.TempDir()
	if code, _, stderr := runKeel(append(args, "--out", fresh)...); code != 0 {
		t.Fatalf("uninterrupted extraction: %s", stderr)
	}
	a, err := steer.LoadVectorFile(filepath.Join(killed, "axis.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := steer.LoadVectorFile(filepath.Join(fresh, "axis.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for l, v := range a.Raw {
		for i := range v {
			if math.Abs(float64(v[i]-b.Raw[l][i])) > 1e-5*(1+math.Abs(float64(v[i]))) {
				t.Fatalf("layer %d value %d: resumed %v, uninterrupted %v", l, i, v[i], b.Raw[l][i])
			}
		}
	}
	// Resuming with other settings would mix two experiments: refused.
	code, _, stderr = runKeel("axis", "extract", "--limit", "6", "--questions", "2", "--out", killed)
	if code == 0 || !strings.Contains(stderr, "other settings") {
		t.Fatalf("resume with other settings: exit %d, %q", code, stderr)
	}
}

// The drift experiment and the capping evaluation run end to end on the embedded model (a small protocol: the
// figures in docs/results/axis.md come from the full one) and print their figures as JSON.
func TestDriftAndCappingCommands(t *testing.T) {
	torchtest.Runtime(t)
	dir := t.TempDir()
	code, stdout, stderr := runKeel("eval", "capping", "--dir", dir, "--limit", "4", "--questions", "1", "--min-count", "1", "--max-tokens", "64",
		"--conversations", "2", "--turns", "2", "--jailbreaks", "3", "--identity", "3", "--windows", "2:6", "--percentiles", "0.25", "--json")
	if code != 0 {
		t.Fatalf("eval capping: %s", stderr)
	}
	var rep struct {
		PC1               *float64 `json:"pc1_axis_cosine_mid"`
		SteerAwayRatio    *float64 `json:"steer_away_identity_ratio"`
		SteerTowardChange *float64 `json:"steer_toward_jailbreak_change"`
		Best              struct {
			ID                 string   `json:"id"`
			DriftReduction     *float64 `json:"drift_reduction"`
			JailbreakReduction *float64 `json:"jailbreak_reduction"`
			CapabilityChange   *float64 `json:"capability_change"`
		} `json:"best"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("eval capping --json printed %q: %v", stdout, err)
	}
	if rep.PC1 == nil || *rep.PC1 < 0 || *rep.PC1 > 1 || rep.SteerAwayRatio == nil || rep.SteerTowardChange == nil ||
		rep.Best.ID != "layers_2:6-p0.25" || rep.Best.DriftReduction == nil || rep.Best.JailbreakReduction == nil || rep.Best.CapabilityChange == nil {
		t.Fatalf("eval capping figures: %s", stdout)
	}
	for _, f := range []string{"axis.safetensors", "report.json", "calibration.json", "capping.json", "caps/layers_2:6-p0.25.safetensors"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("eval capping left no %s", f)
		}
	}
	csvPath, pngPath := filepath.Join(dir, "drift.csv"), filepath.Join(dir, "drift.png")
	code, stdout, stderr = runKeel("drift", "--axis", filepath.Join(dir, "axis.safetensors"), "--cap", filepath.Join(dir, "caps", "layers_2:6-p0.25.safetensors"),
		"--conversations", "2", "--turns", "2", "--min-conversations", "1", "--max-tokens", "24", "--csv", csvPath, "--png", pngPath, "--json")
	if code != 0 {
		t.Fatalf("drift: %s", stderr)
	}
	var curves []struct {
		Domain     string     `json:"domain"`
		Projection []*float64 `json:"projection"`
	}
	if err := json.Unmarshal([]byte(stdout), &curves); err != nil || len(curves) != 4 {
		t.Fatalf("drift --json printed %q (%v)", stdout, err)
	}
	for _, c := range curves {
		if len(c.Projection) != 2 || c.Projection[0] == nil || math.IsNaN(*c.Projection[0]) {
			t.Fatalf("%s projection %v", c.Domain, c.Projection)
		}
	}
	if raw, err := os.ReadFile(csvPath); err != nil || strings.Count(string(raw), "\n") != 9 {
		t.Fatalf("drift CSV: %q %v", raw, err)
	}
	if st, err := os.Stat(pngPath); err != nil || st.Size() < 1000 {
		t.Fatalf("drift PNG: %v", err)
	}
	// A file of the wrong kind or for the wrong model is refused with one line.
	code, _, stderr = runKeel("drift", "--axis", filepath.Join(dir, "axis.safetensors"), "--cap", filepath.Join(dir, "axis.safetensors"))
	if code == 0 || !strings.Contains(stderr, "not a capping config") {
		t.Fatalf("an axis as --cap: exit %d, %q", code, stderr)
	}
	code, _, stderr = runKeel("drift", "--axis", filepath.Join(dir, "axis.safetensors"), "--model", storiesDir(t))
	if code == 0 || !strings.Contains(stderr, "extract an axis for it") {
		t.Fatalf("an axis of another model: exit %d, %q", code, stderr)
	}
}

// A capping config with vectors of lengths 5 and 0.3 (not unit), imported and applied by keel, gives the same
// 64 greedy tokens as the paper's hook written out directly on the raw vectors (proj = <h, v/|v|>,
// h -= max(proj - cap, 0) v/|v|) in a plain llama2.c loop over the fixture's own file.
func TestImportedCapsGenerateAsThePapersHook(t *testing.T) {
	ref := modeltest.StoriesReference(t)
	lm := modeltest.Stories(t)
	prompt := lm.Tokenizer.Encode("Once upon a time", true)
	const n = 64
	D := ref.Dim
	lengths := map[int]float64{2: 5, 3: 0.3}
	raw := map[int][]float32{}
	unit := map[int][]float32{}
	for l, length := range lengths {
		u := modeltest.Unit(D, uint64(17+l))
		unit[l] = u
		raw[l] = make([]float32, D)
		for i := range u {
			raw[l][i] = float32(length * float64(u[i]))
		}
	}
	// Caps at the median uncapped projection, so that the hook acts on about half the tokens.
	projs := map[int][]float64{}
	uncapped := ref.Greedy(prompt, n, func(l int, x []float32) {
		if u, ok := unit[l]; ok {
			projs[l] = append(projs[l], steer.Dot(x, u))
		}
	})
	caps := map[int]float64{}
	for l, p := range projs {
		sorted := append([]float64(nil), p...)
		slices.Sort(sorted)
		caps[l] = sorted[len(sorted)/2]
	}
	paper := ref.Greedy(prompt, n, func(l int, x []float32) {
		v, ok := raw[l]
		if !ok {
			return
		}
		norm := steer.Norm(v)
		proj := 0.0
		for i := range x {
			proj += float64(x[i]) * float64(v[i]) / norm
		}
		if excess := proj - caps[l]; excess > 0 {
			for i := range x {
				x[i] -= float32(excess * float64(v[i]) / norm)
			}
		}
	})
	if slices.Equal(paper, uncapped) {
		t.Fatalf("the caps change nothing; the test would not see a wrong threshold")
	}

	dir := filepath.Join(t.TempDir(), "stories260k")
	writePT(t, filepath.Join(dir, "capping_config.pt"), map[string]any{
		"vectors": map[string]any{
			"v2": map[string]any{"vector": &ptfile.Tensor{Shape: []int64{int64(D)}, Data: raw[2]}, "layer": 2},
			"v3": map[string]any{"vector": &ptfile.Tensor{Shape: []int64{int64(D)}, Data: raw[3]}, "layer": 3}},
		"experiments": []any{map[string]any{"id": "layers_2:4-p0.5", "interventions": []any{
			map[string]any{"vector": "v2", "cap": caps[2]}, map[string]any{"vector": "v3", "cap": caps[3]}}}},
	})
	out := filepath.Join(t.TempDir(), "imported")
	if code, _, stderr := runKeel("axis", "import", filepath.Join(dir, "capping_config.pt"), "--n-layers", "5", "--out", out); code != 0 {
		t.Fatalf("import: %s", stderr)
	}
	c, err := steer.LoadVectorFile(filepath.Join(out, "caps", "layers_2:4-p0.5.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for l := range lengths {
		if math.Abs(c.Tau[l]+caps[l]) > 1e-9 {
			t.Errorf("layer %d: tau %v, want -cap = %v whatever the vector's length", l, c.Tau[l], -caps[l])
		}
	}
	res, err := lm.GenerateText(context.Background(), [][]int{prompt}, model.TextConfig{
		GenerateConfig: model.GenerateConfig{MaxTokens: n, Hooks: model.NewHooks(c.Caps()...)}})
	if err != nil {
		t.Fatal(err)
	}
	got := res[0].IDs
	if len(got) < n && res[0].Reason != "eos" || len(got) < 32 {
		t.Fatalf("keel stopped after %d tokens (%s)", len(got), res[0].Reason)
	}
	if !slices.Equal(got, paper[:len(got)]) {
		st := tokenizer.NewStreamAfter(lm.Tokenizer, prompt[len(prompt)-1])
		var text strings.Builder
		for _, id := range paper {
			text.WriteString(st.Next(id))
		}
		t.Fatalf("capped greedy tokens differ:\n keel  %q\n paper %q", res[0].Text, text.String())
	}
}
