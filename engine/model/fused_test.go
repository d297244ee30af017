package model

import (
	"math"
	"reflect"
	"testing"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// The fused decode step computes what forward computes, step by step over a padded batch, for every
// architecture: logits, and the records of captures (one direction, several, the whole vector), an add and caps
// (floor and ceiling, on every row or on some), run past the sliding window of the architectures that have one.
func TestFusedStepEqualsForward(t *testing.T) {
	rt := torchtest.Runtime(t)
	type run struct {
		cfg  *Config
		rows int
	}
	runs := map[string]run{}
	for name, cfg := range TinyConfigs() {
		runs[name] = run{cfg, 3}
	}
	// Products of one row against matrices over 32K weights go to BLAS's gemv, batches over 16 rows to its gemm.
	wide := *TinyConfigs()["llama"]
	wide.HiddenSize, wide.IntermediateSize, wide.NumAttentionHeads, wide.NumKeyValueHeads, wide.HeadDim = 256, 512, 8, 4, 32
	runs["llama-wide-1-row"], runs["llama-wide-20-rows"] = run{&wide, 1}, run{&wide, 20}
	for name, r := range runs {
		cfg := r.cfg
		t.Run(name, func(t *testing.T) {
			fused, err := NewRandom(rt, cfg, Options{}, 11)
			if err != nil {
				t.Fatal(err)
			}
			defer fused.Close()
			ref, err := NewRandom(rt, cfg, Options{Unfused: true}, 11)
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			// A split model, its layers alternating between the CPU and a second device that libtorch also runs
			// on the CPU, the head on the second: every move, per-device copy and kept tensor of a split forward
			// is exercised, against the same weights on one device.
			var layers []torch.Device
			for i := range cfg.NumHiddenLayers {
				layers = append(layers, []torch.Device{{Index: 1}, torch.CPU}[(cfg.NumHiddenLayers-1-i)%2])
			}
			split, err := NewRandom(rt, cfg, Options{Layers: layers}, 11)
			if err != nil {
				t.Fatal(err)
			}
			defer split.Close()
			if split.fusedStepper() != nil || split.Opts.headDevice() != (torch.Device{Index: 1}) {
				t.Fatal("the split model fuses, or its head is not on the last layer's device")
			}
			if devs := split.Devices(); len(devs) != 2 || devs[0] != torch.CPU || devs[1] != (torch.Device{Index: 1}) {
				t.Fatalf("the split model is placed on %v", devs)
			}
			if fused.fusedStepper() == nil {
				t.Fatalf("no fused decoder for %s: %v", name, fused.fused.err)
			}
			if ref.fusedStepper() != nil {
				t.Fatal("Options.Unfused still fuses")
			}
			d := cfg.HiddenSize
			u, w := make([]float32, d), make([]float32, d)
			for i := range u {
				u[i] = float32(math.Sin(float64(i))) / float32(math.Sqrt(float64(d)/2))
				w[i] = float32(math.Cos(float64(3*i))) / float32(math.Sqrt(float64(d)/2))
			}
			L := cfg.NumHiddenLayers
			list := []Intervention{
				{Layer: 0, Kind: Capture, Vectors: [][]float32{u}},
				{Layer: 0, Kind: Cap, Vectors: [][]float32{u}, Tau: 0.3},
				{Layer: 0, Kind: Capture, Vectors: [][]float32{u, w}},
				{Layer: 1, Kind: Add, Vectors: [][]float32{w}, Coeff: 1.5, Rows: []int{1}},
				{Layer: 1, Kind: Cap, Vectors: [][]float32{w}, Tau: -0.2, Ceiling: true, Rows: []int{0, 2, 17}},
				{Layer: L - 1, Kind: Capture, Full: true},
				{Layer: L - 1, Kind: Capture, Vectors: [][]float32{w}},
			}
			var prompts [][]int
			for b := range r.rows {
				prompts = append(prompts, testIDs([]int{5, 9, 2}[b%3]+b/3, cfg.VocabSize, b+1))
			}
			steps := 40 // past the tiny configs' window of 24
			runs := map[string][][]float32{}
			recs := map[string][][][]Record{}
			for key, m := range map[string]*Model{"true": fused, "false": ref, "split": split} {
				plan, err := m.compileHooks(list, 1)
				if err != nil {
					t.Fatal(err)
				}
				defer plan.close()
				s := m.RT.NewScope().NoGrad()
				defer s.Close()
				longest := 0
				for _, p := range prompts {
					longest = max(longest, len(p))
				}
				pad := make([]int, len(prompts))
				ids := make([][]int, len(prompts))
				for b, p := range prompts {
					pad[b] = longest - len(p)
					ids[b] = append(make([]int, pad[b]), p...)
				}
				cache, err := m.NewCache(pad, longest+steps)
				if err != nil {
					t.Fatal(err)
				}
				defer cache.Close()
				m.forward(s, Pass{IDs: ids, Cache: cache, LastOnly: true, plan: plan})
				cache.Len = longest
				for step := 0; step < steps; step++ {
					next := make([][]int, len(prompts))
					for b := range next {
						next[b] = []int{(7*step + 13*b + 1) % cfg.VocabSize}
					}
					out := m.forward(s, Pass{IDs: next, Cache: cache, LastOnly: true, plan: plan})
					if err := s.Err(); err != nil {
						t.Fatal(err)
					}
					logits := out.hostLogits
					if logits == nil {
						logits = s.Float32s(out.logits)
					} else if m == ref {
						t.Fatal("the reference model ran a fused step")
					}
					runs[key] = append(runs[key], logits)
					var rs [][]Record
					for b := range out.records {
						rs = append(rs, out.records[b][0])
					}
					recs[key] = append(recs[key], rs)
					cache.Len++
					s.Release()
				}
				if m == fused && runs[key][0] != nil && fused.fused.dec == nil {
					t.Fatal("fused model without a decoder")
				}
			}
			for step := range runs["true"] {
				if diff := maxAbsDiff(runs["true"][step], runs["false"][step]); diff > 1e-4 {
					t.Fatalf("step %d: fused logits differ from forward's by %g", step, diff)
				}
				if diff := maxAbsDiff(runs["split"][step], runs["false"][step]); diff != 0 {
					t.Fatalf("step %d: the split model's logits differ from one device's by %g", step, diff)
				}
				if !reflect.DeepEqual(recs["split"][step], recs["false"][step]) {
					t.Fatalf("step %d: the split model's records differ from one device's", step)
				}
				got, want := recs["true"][step], recs["false"][step]
				if len(got) != len(want) || len(got) != len(prompts) {
					t.Fatalf("step %d: %d rows of records, forward gave %d", step, len(got), len(want))
				}
				for b := range got {
					if len(got[b]) != len(want[b]) {
						t.Fatalf("step %d row %d: %d records, forward gave %d", step, b, len(got[b]), len(want[b]))
					}
					for i := range got[b] {
						g, w := got[b][i], want[b][i]
						if g.Intervention != w.Intervention || g.Layer != w.Layer || g.Kind != w.Kind || len(g.Values) != len(w.Values) {
							t.Fatalf("step %d row %d record %d: %+v, forward gave %+v", step, b, i, g, w)
						}
						if diff := maxAbsDiff(g.Values, w.Values); diff > 1e-4 {
							t.Fatalf("step %d row %d record %d (%s at layer %d): values differ by %g", step, b, i, g.Kind, g.Layer, diff)
						}
					}
				}
			}
		})
	}
}

func testIDs(n, vocab, seed int) []int {
	ids := []int{1}
	for len(ids) < n {
		ids = append(ids, 3+(len(ids)*31+seed*17)%(vocab-3))
	}
	return ids
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	worst := 0.0
	for i := range a {
		worst = max(worst, math.Abs(float64(a[i]-b[i])))
	}
	return worst
}
