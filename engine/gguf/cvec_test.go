package gguf_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/gguf"
	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/model/modeltest"
)

// cvecDriver builds conformance/llamacpp/cvec_driver.cpp against the llama.cpp source bundle and shared
// libraries node-llama-cpp installs.
func cvecDriver(t *testing.T) (bin, backends string) {
	dir := llamacppDir(t)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "llama.cpp")
	bundle := filepath.Join(dir, "node_modules", "node-llama-cpp", "llama", "gitRelease.bundle")
	if out, err := exec.Command("git", "clone", "-q", bundle, src).CombinedOutput(); err != nil {
		t.Fatalf("extracting llama.cpp's headers from %s: %v\n%s", bundle, err, out)
	}
	backends = filepath.Join(dir, "node_modules", "@node-llama-cpp", "linux-x64", "bins", "linux-x64")
	bin = filepath.Join(tmp, "cvec_driver")
	cmd := exec.Command("g++", "-O1", "-std=c++17", "-I", filepath.Join(src, "include"), "-I", filepath.Join(src, "ggml", "include"),
		filepath.Join(dir, "cvec_driver.cpp"), "-o", bin, "-L", backends, "-l:libllama.v0.4.0.so", "-l:libllama-common.so",
		"-l:libggml-base.so", "-l:libggml.v0.4.0.so", "-Wl,-rpath,"+backends)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the control-vector driver: %v\n%s", err, out)
	}
	return bin, backends
}

func runDriver(t *testing.T, bin, backends, modelPath, cvec string, layers [2]int, ids []int) [][][2]float64 {
	var in bytes.Buffer
	for _, id := range ids {
		fmt.Fprintf(&in, "%d ", id)
	}
	cmd := exec.Command(bin, backends, modelPath, cvec, fmt.Sprint(layers[0]), fmt.Sprint(layers[1]))
	cmd.Stdin = &in
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cvec_driver: %v\n%s", err, errb.String())
	}
	var res [][][2]float64
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "[") {
			continue
		}
		var top [][2]float64
		if err := json.Unmarshal([]byte(line), &top); err != nil {
			t.Fatalf("driver output %q: %v", line, err)
		}
		res = append(res, top)
	}
	return res
}

// A control vector exported from keel and loaded by llama.cpp's own loader shifts llama.cpp's distribution the
// way keel's additive steering at the same layer does.
func TestControlVectorMatchesKeelSteering(t *testing.T) {
	lm := modeltest.Stories(t)
	bin, backends := cvecDriver(t)
	dir := t.TempDir()
	mpath := filepath.Join(dir, "stories.gguf")
	if err := gguf.ExportModel(lm.Model, lm.Tokenizer, mpath, gguf.GGMLF32); err != nil {
		t.Fatal(err)
	}
	const layer, coeff = 2, 3.0
	u := modeltest.Unit(lm.HiddenSize(), 21)
	cpath := filepath.Join(dir, "axis.gguf")
	if err := gguf.ExportControlVector(cpath, "llama", map[int][]float32{layer: u}, coeff); err != nil {
		t.Fatal(err)
	}
	ids := lm.Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.", true)
	plain := runDriver(t, bin, backends, mpath, "-", [2]int{1, lm.NumLayers() - 1}, ids)
	steered := runDriver(t, bin, backends, mpath, cpath, [2]int{1, lm.NumLayers() - 1}, ids)
	hooks := model.NewHooks(model.Intervention{Layer: layer, Kind: model.Add, Vectors: [][]float32{u}, Coeff: coeff})
	top1, diff := compare(t, "steered", lm.Model, [][]int{ids}, llamaOut{Positions: [][][][2]float64{steered}}, 1<<30, hooks)
	// The vector must matter: llama.cpp's own distribution moves.
	moved := 0.0
	for p := range plain {
		for k := range plain[p] {
			if plain[p][k][0] == steered[p][k][0] {
				moved = math.Max(moved, math.Abs(plain[p][k][1]-steered[p][k][1]))
			}
		}
	}
	t.Logf("control vector at keel layer %d (direction.%d), scale %v: llama.cpp vs keel steering top-1 %.4f over %d positions, max |logprob diff| %.2g; the vector moved llama.cpp's log-probs by up to %.3f", layer, layer, coeff, top1, len(ids), diff, moved)
	if moved < 0.05 {
		t.Fatalf("the control vector barely changed llama.cpp's output (%.3g): the check would prove nothing", moved)
	}
	if top1 < 0.99 || diff > 1e-3 {
		t.Fatalf("llama.cpp with keel's control vector disagrees with keel's steering: top-1 %.4f, max diff %g", top1, diff)
	}
}
