// Package modeltest gives tests the stories260K fixture as a loaded model and seeded directions.
package modeltest

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/keel-lab/keel/engine/convert"
	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// StoriesDir converts the stories260K fixture into a temporary Hugging Face folder.
func StoriesDir(t testing.TB) string {
	t.Helper()
	fx := filepath.Join(torchtest.Fixtures(t), "stories260k")
	dir := filepath.Join(t.TempDir(), "stories260k")
	if err := convert.Llama2c(filepath.Join(fx, "stories260K.bin"), filepath.Join(fx, "tok512.bin"), dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Stories loads the converted stories260K fixture on the CPU in f32.
func Stories(t testing.TB) *model.LM {
	t.Helper()
	rt := torchtest.Runtime(t)
	lm, err := model.Load(rt, StoriesDir(t), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lm.Close)
	return lm
}

// Unit draws a unit vector of d values from a fixed-seed LCG (independent of libtorch's generator).
func Unit(d int, seed uint64) []float32 {
	v := make([]float32, d)
	var n float64
	x := seed
	for i := range v {
		x = x*6364136223846793005 + 1442695040888963407
		v[i] = float32(int64(x>>11)%2001-1000) / 1000
		n += float64(v[i]) * float64(v[i])
	}
	for i := range v {
		v[i] /= float32(math.Sqrt(n))
	}
	return v
}
