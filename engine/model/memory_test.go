package model_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// rss reads the process's resident set size from /proc.
func rss(t *testing.T) int64 { return procStatus(t, "VmRSS:") }

// peakRSS is the resident set's high-water mark.
func peakRSS(t *testing.T) int64 { return procStatus(t, "VmHWM:") }

func procStatus(t *testing.T, field string) int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("reading RSS: %v", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024
		}
	}
	t.Fatalf("%s not found in /proc/self/status", field)
	return 0
}

// Every decode step allocates a few hundred tensors; none may outlive the step. 10,000 steps (in generations
// of 500, with hooks on so captures are copied out too) must not grow RSS beyond 5% of what 1,000 steps reach.
func TestDecodeMemoryIsFlat(t *testing.T) {
	rt := torchtest.Runtime(t)
	m, err := model.NewRandom(rt, model.TinyConfigs()["llama"], model.Options{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	u := randomUnit(m.HiddenSize(), 5)
	hooks := model.NewHooks(
		model.Intervention{Layer: 1, Kind: model.Capture, Vectors: [][]float32{u}},
		model.Intervention{Layer: 1, Kind: model.Cap, Vectors: [][]float32{u}, Tau: 0},
	)
	steps := 0
	var at1k int64
	for steps < 10000 {
		seen := 0
		_, err := m.Generate(context.Background(), [][]int{{1, 5, 9}}, model.GenerateConfig{MaxTokens: 500, EOS: []int{-1}, Hooks: hooks,
			Sampling: model.Sampling{Temperature: 0.8, Seed: uint64(steps)},
			OnStep: func(st model.Step) (bool, error) {
				seen++
				if len(st.Records) != 2 {
					t.Fatalf("step %d: %d records", st.Index, len(st.Records))
				}
				return false, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		steps += seen
		if steps == 1000 {
			at1k = rss(t)
		}
	}
	at10k := rss(t)
	t.Logf("RSS after 1,000 decode steps: %.1f MiB; after 10,000: %.1f MiB (%+.2f%%)", float64(at1k)/(1<<20), float64(at10k)/(1<<20), 100*float64(at10k-at1k)/float64(at1k))
	if float64(at10k) > 1.05*float64(at1k) {
		t.Fatalf("RSS grew from %d to %d bytes between 1,000 and 10,000 decode steps", at1k, at10k)
	}
}
