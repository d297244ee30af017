package steer

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/safetensors"
)

func randomVectors(layers, d int, seed uint64) map[int][]float32 {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := map[int][]float32{}
	for l := 0; l < layers; l++ {
		v := make([]float32, d)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 3)
		}
		out[l] = v
	}
	return out
}

func TestAxisFileRoundTripAndFit(t *testing.T) {
	raw := randomVectors(4, 16, 1)
	a, err := NewVectorFile(Header{Model: "m", WeightsFingerprint: "abc", AvgNorm: map[int]float64{2: 7.5}}, raw, 4)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "axis.safetensors")
	if err := SaveVectorFile(path, a); err != nil {
		t.Fatal(err)
	}
	b, err := LoadVectorFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if b.NLayers != 4 || b.DModel != 16 || b.Sign != SignAssistant || b.HookSite != HookSite || b.Operation != OpProject || b.AvgNorm[2] != 7.5 {
		t.Fatalf("header read back as %+v", b.Header)
	}
	for l, v := range raw {
		for i := range v {
			if b.Raw[l][i] != v[i] {
				t.Fatalf("layer %d value %d: %v, saved %v", l, i, b.Raw[l][i], v[i])
			}
		}
		if n := Norm(b.Layers[l]); math.Abs(n-1) > 1e-6 {
			t.Fatalf("layer %d unit vector has length %v", l, n)
		}
		if c := Dot(b.Layers[l], v) / Norm(v); math.Abs(c-1) > 1e-6 {
			t.Fatalf("layer %d unit vector is not along the raw one (cos %v)", l, c)
		}
	}
	// Shape mismatches cannot be overridden; a hash mismatch can.
	for _, c := range []struct {
		layers, d  int
		fp         string
		ignoreHash bool
		want       string
	}{
		{5, 16, "abc", false, "4 layers x 16 wide, this one is 5 x 16"},
		{4, 32, "abc", true, "4 layers x 16 wide, this one is 4 x 32"},
		{4, 16, "xyz", false, "--ignore-hash"},
	} {
		_, err := b.Fit(path, c.layers, c.d, Weights{Fingerprint: c.fp}, c.ignoreHash)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("Fit(%d, %d, %q, %v) = %v, want an error naming the file and %q", c.layers, c.d, c.fp, c.ignoreHash, err, c.want)
		}
	}
	if _, err := b.Fit(path, 4, 16, Weights{Fingerprint: "xyz"}, true); err != nil {
		t.Fatalf("--ignore-hash: %v", err)
	}
	if rel, err := b.Fit(path, 4, 16, Weights{Fingerprint: "abc"}, false); err != nil || rel != SameWeights {
		t.Fatalf("matching model: %v, %v", rel, err)
	}
	// A fine-tune of the weights the file was made on (its lineage names them) fits without flags.
	if rel, err := b.Fit(path, 4, 16, Weights{Fingerprint: "ft2", Ancestors: []string{"ft1", "abc"}}, false); err != nil || rel != BaseWeights {
		t.Fatalf("fine-tune of the axis's model: %v, %v", rel, err)
	}
	if _, err := b.Steer(1, 1); err == nil || !strings.Contains(err.Error(), "calibrate") {
		t.Fatalf("steering without an average norm: %v", err)
	}
	if iv, err := b.Steer(2, -0.5); err != nil || iv.Coeff != -0.5*7.5 || iv.Layer != 2 {
		t.Fatalf("steer: %+v, %v", iv, err)
	}
}

func TestCapsAreFloorsOnTheUnitAxis(t *testing.T) {
	raw := randomVectors(3, 8, 2)
	a, err := NewVectorFile(Header{Operation: OpCap, Tau: map[int]float64{1: 0.5, 2: -1}}, raw, 3)
	if err != nil {
		t.Fatal(err)
	}
	caps := a.Caps()
	if len(caps) != 2 || caps[0].Layer != 1 || caps[0].Tau != 0.5 || caps[1].Layer != 2 || caps[0].Ceiling {
		t.Fatalf("caps %+v", caps)
	}
	if Dot(caps[0].Vectors[0], a.Layers[1]) < 1-1e-6 {
		t.Fatal("a cap's vector is not the unit axis")
	}
}

func TestBadVectorFilesAreRefused(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.safetensors")
	safetensors.Write(plain, []safetensors.Tensor{{Name: "x", DType: "F32", Shape: []int64{1}, Data: make([]byte, 4)}}, nil)
	zero := filepath.Join(dir, "zero.safetensors")
	a, _ := NewVectorFile(Header{}, randomVectors(2, 4, 3), 2)
	a.Raw[1] = make([]float32, 4)
	SaveVectorFile(zero, a)
	missing := filepath.Join(dir, "missing.safetensors")
	garbage := filepath.Join(dir, "garbage.safetensors")
	os.WriteFile(garbage, []byte("not a safetensors file at all"), 0o644)
	for path, want := range map[string]string{plain: "no keel header", zero: "length 0", missing: "missing.safetensors", garbage: "garbage.safetensors"} {
		_, err := LoadVectorFile(path)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", filepath.Base(path), err, want)
		}
	}
}

func TestWeightsFingerprintSeesTheWeights(t *testing.T) {
	dir := t.TempDir()
	write := func(fill byte) string {
		data := make([]byte, 3<<20)
		for i := range data {
			data[i] = fill
		}
		data[len(data)/2] = 9 // the middle is not read: a fingerprint, not a hash of every byte
		safetensors.Write(filepath.Join(dir, "model.safetensors"), []safetensors.Tensor{{Name: "w", DType: "U8", Shape: []int64{int64(len(data))}, Data: data}}, nil)
		fp, err := WeightsFingerprint(dir)
		if err != nil {
			t.Fatal(err)
		}
		return fp
	}
	a, b, c := write(1), write(1), write(2)
	if a != b || a == c || len(a) != 64 {
		t.Fatalf("fingerprints %s %s %s", a, b, c)
	}
	if _, err := WeightsFingerprint(t.TempDir()); err == nil {
		t.Fatal("a folder without weights has a fingerprint")
	}
}
