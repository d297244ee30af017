package model_test

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// tinyCheckpoint writes a random-weight checkpoint of one tiny architecture in Hugging Face layout and returns
// the folder with the in-memory model it came from.
func tinyCheckpoint(t *testing.T, rt *torch.Runtime, name string, dtype torch.DType) (string, *model.Model) {
	t.Helper()
	cfg := model.TinyConfigs()[name]
	m, err := model.NewRandom(rt, cfg, model.Options{}, 42)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	dir := t.TempDir()
	if err := m.Save(dir, dtype); err != nil {
		t.Fatal(err)
	}
	return dir, m
}

func testPrompt(n, vocab int, seed int) []int {
	ids := []int{1}
	x := uint64(seed)
	for len(ids) < n {
		x = x*6364136223846793005 + 1442695040888963407
		ids = append(ids, 3+int(x>>33)%(vocab-3))
	}
	return ids
}

func maxAbsDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func TestEveryArchitecture(t *testing.T) {
	rt := torchtest.Runtime(t)
	names := make([]string, 0)
	for n := range model.TinyConfigs() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			dir, orig := tinyCheckpoint(t, rt, name, torch.Float32)
			cfg, err := model.ReadConfig(dir)
			if err != nil {
				t.Fatal(err)
			}
			m, err := model.LoadWeights(rt, dir, cfg, model.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			V := cfg.VocabSize
			prompt := testPrompt(40, V, 3) // longer than the tiny sliding window (24)
			a, err := orig.Logits(prompt, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := m.Logits(prompt, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d := maxAbsDiff(a, b); d != 0 {
				t.Fatalf("reloaded checkpoint differs from the saved model: max |diff| %g", d)
			}
			// Logits must be well spread, or agreement checks (here and against other implementations) are vacuous.
			if spread := maxAbsDiff(a[:V], make([]float32, V)); spread < 1 {
				t.Fatalf("degenerate logits (max |logit| %g)", spread)
			}

			// KV-cached greedy decoding equals recomputing the whole sequence at every step.
			gen := func(noCache bool, prompts ...[]int) []model.Result {
				res, err := m.Generate(context.Background(), prompts, model.GenerateConfig{MaxTokens: 30, NoCache: noCache, EOS: []int{-1}})
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			cached, full := gen(false, prompt), gen(true, prompt)
			if !equalInts(cached[0].IDs, full[0].IDs) {
				t.Fatalf("cached decode %v != recomputed %v", cached[0].IDs, full[0].IDs)
			}
			// The last position of the recomputed forward equals the cached step's logits.
			seq := append(append([]int(nil), prompt...), cached[0].IDs...)
			logits, err := m.Logits(seq, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, id := range cached[0].IDs {
				row := logits[(len(prompt)-1+i)*V : (len(prompt)+i)*V]
				if best := argmax(row); best != id {
					t.Fatalf("step %d: cached decode chose %d, full forward's argmax %d", i, id, best)
				}
			}

			// Batched, left-padded generation equals one prompt at a time.
			short := testPrompt(9, V, 5)
			batch := gen(false, prompt, short)
			alone := gen(false, short)
			if !equalInts(batch[0].IDs, cached[0].IDs) || !equalInts(batch[1].IDs, alone[0].IDs) {
				t.Fatalf("batched generation differs from single:\n%v\n%v\n%v\n%v", batch[0].IDs, cached[0].IDs, batch[1].IDs, alone[0].IDs)
			}

			// Teacher-forced log-probs equal log_softmax of the logits.
			tf, err := m.TeacherForce([][]int{short, prompt}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i+1 < len(prompt); i++ {
				row := a[i*V : (i+1)*V]
				want := float64(row[prompt[i+1]]) - logSumExp(row)
				if math.Abs(want-float64(tf.Logprobs[1][i])) > 1e-4 {
					t.Fatalf("position %d: teacher-forced logprob %v, from logits %v", i, tf.Logprobs[1][i], want)
				}
			}

			// bf16 weights and compute agree with f32 on most greedy choices.
			bdir, _ := tinyCheckpoint(t, rt, name, torch.BFloat16)
			bm, err := model.LoadWeights(rt, bdir, cfg, model.Options{DType: torch.BFloat16})
			if err != nil {
				t.Fatal(err)
			}
			defer bm.Close()
			bl, err := bm.Logits(prompt, nil)
			if err != nil {
				t.Fatal(err)
			}
			agree := 0
			for i := 0; i < len(prompt); i++ {
				if argmax(bl[i*V:(i+1)*V]) == argmax(a[i*V:(i+1)*V]) {
					agree++
				}
			}
			if agree*10 < len(prompt)*7 {
				t.Fatalf("bf16 top-1 agrees with f32 at only %d of %d positions", agree, len(prompt))
			}
			t.Logf("reload exact, cache == recompute, batch == single, bf16 top-1 agreement %d/%d", agree, len(prompt))
		})
	}
}

func argmax(xs []float32) int {
	best := 0
	for i, x := range xs {
		if x > xs[best] {
			best = i
		}
	}
	return best
}

func logSumExp(xs []float32) float64 {
	m := math.Inf(-1)
	for _, x := range xs {
		m = math.Max(m, float64(x))
	}
	s := 0.0
	for _, x := range xs {
		s += math.Exp(float64(x) - m)
	}
	return m + math.Log(s)
}

func TestBadCheckpointsGiveClearErrors(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir, _ := tinyCheckpoint(t, rt, "llama", torch.Float32)
	weights := filepath.Join(dir, "model.safetensors")
	good, err := os.ReadFile(weights)
	if err != nil {
		t.Fatal(err)
	}
	cfgRaw, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	load := func(opts model.Options) error {
		cfg, err := model.ReadConfig(dir)
		if err != nil {
			return err
		}
		m, err := model.LoadWeights(rt, dir, cfg, opts)
		if err == nil {
			m.Close()
		}
		return err
	}
	editConfig := func(key string, value any) {
		var c map[string]any
		json.Unmarshal(cfgRaw, &c)
		c[key] = value
		raw, _ := json.Marshal(c)
		os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644)
	}
	cases := []struct {
		name  string
		setup func()
		opts  model.Options
		want  []string
	}{
		{"missing weights", func() { os.Remove(weights) }, model.Options{}, []string{dir, "no *.safetensors"}},
		{"truncated weights", func() { os.WriteFile(weights, good[:len(good)/2], 0o644) }, model.Options{}, []string{weights, "truncated"}},
		{"garbage weights", func() { os.WriteFile(weights, []byte("this is not a safetensors file at all"), 0o644) }, model.Options{}, []string{weights}},
		{"shape differs from config", func() { editConfig("intermediate_size", 96) }, model.Options{}, []string{weights, "gate_proj", "config.json"}},
		{"unknown architecture", func() { editConfig("architectures", []string{"FalconForCausalLM"}) }, model.Options{}, []string{"config.json", "FalconForCausalLM", "LlamaForCausalLM"}},
		{"fewer layers in config than in the weights", func() { editConfig("num_hidden_layers", 2) }, model.Options{}, []string{"decoder layers 0..2", "num_hidden_layers is 2"}},
		{"weights that are a FIFO", func() { os.Remove(weights); syscall.Mkfifo(weights, 0o644) }, model.Options{}, []string{weights, "not a regular file"}},
		{"negative norm epsilon", func() { editConfig("rms_norm_eps", -1) }, model.Options{}, []string{"config.json", "rms_norm_eps -1"}},
		{"rotary base below 1", func() { editConfig("rope_theta", 0.5) }, model.Options{}, []string{"config.json", "rope_theta 0.5"}},
		{"unsupported compute dtype", func() {}, model.Options{DType: torch.Int64}, []string{"dtype", "f32, f16 or bf16"}},
		{"missing config", func() { os.Remove(filepath.Join(dir, "config.json")) }, model.Options{}, []string{"config.json", "not found"}},
	}
	if !rt.CUDAAvailable() {
		cases = append(cases, struct {
			name  string
			setup func()
			opts  model.Options
			want  []string
		}{"cuda where there is none", func() {}, model.Options{Device: torch.Device{CUDA: true}}, []string{"--device cpu"}})
	}
	for _, c := range cases {
		os.Remove(weights) // a case may leave a FIFO there, which a write would block on
		os.WriteFile(weights, good, 0o644)
		os.WriteFile(filepath.Join(dir, "config.json"), cfgRaw, 0o644)
		c.setup()
		err := load(c.opts)
		if err == nil {
			t.Errorf("%s: loaded without error", c.name)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") {
			t.Errorf("%s: error is not one line: %q", c.name, msg)
		}
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: error %q does not mention %q", c.name, msg, w)
			}
		}
	}
	// An integer weight dtype is refused with the tensor's name.
	os.WriteFile(filepath.Join(dir, "config.json"), cfgRaw, 0o644)
	os.WriteFile(weights, good, 0o644)
	raw := strings.Replace(string(good), `"model.norm.weight":{"data_offsets":`, `"model.norm.weight":{"data_offsets":`, 1)
	raw = strings.Replace(raw, `"dtype":"F32","shape":[64]}`, `"dtype":"I32","shape":[64]}`, 1)
	os.WriteFile(weights, []byte(raw), 0o644)
	if err := load(model.Options{}); err == nil || !strings.Contains(err.Error(), "I32") {
		t.Errorf("integer weights: %v", err)
	}
}

// Weights holding NaN stop generation with one line, greedy or sampled, instead of emitting garbage tokens.
func TestNaNWeightsStopGeneration(t *testing.T) {
	rt := torchtest.Runtime(t)
	_, m := tinyCheckpoint(t, rt, "llama", torch.Float32)
	s := rt.NewScope().NoGrad()
	d := m.Config.HiddenSize
	nan := make([]float32, d)
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	s.CopyInto(m.Norm, s.FromData(nan, torch.Float32, []int64{int64(d)}, torch.CPU))
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, temp := range []float64{0, 0.8} {
		_, err := m.Generate(context.Background(), [][]int{{1, 5}}, model.GenerateConfig{MaxTokens: 4, Sampling: model.Sampling{Temperature: temp}})
		if err == nil || !strings.Contains(err.Error(), "NaN or Inf") {
			t.Fatalf("temperature %v: %v", temp, err)
		}
	}
}

// A batch of long prompts is prefilled in chunks through the KV cache: the tokens equal recomputing the whole
// sequence at every step, and the prompt records (a capture on every layer, a cap on one) equal a teacher-forced
// pass over the same prompts.
func TestChunkedPrefillEqualsOnePass(t *testing.T) {
	rt := torchtest.Runtime(t)
	cfg := model.TinyConfigs()["llama"]
	m, err := model.NewRandom(rt, cfg, model.Options{}, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var prompts [][]int
	for b := 0; b < 64; b++ { // 64 rows: chunks of 128 positions, so prompts of up to 300 take three
		prompts = append(prompts, testPrompt(150+(b*37)%150, cfg.VocabSize, b))
	}
	u := make([]float32, cfg.HiddenSize)
	u[0] = 1
	hooks := model.NewHooks(model.Intervention{Layer: 0, Kind: model.Cap, Vectors: [][]float32{u}, Tau: 0.1},
		model.Intervention{Layer: 1, Kind: model.Capture, Vectors: [][]float32{u}})
	got := map[int][][]model.Record{}
	gen := func(noCache bool) []model.Result {
		res, err := m.Generate(context.Background(), prompts, model.GenerateConfig{MaxTokens: 6, NoCache: noCache, EOS: []int{-1}, Hooks: hooks,
			PromptRecords: func(row int, recs [][]model.Record) {
				if !noCache {
					got[row] = recs
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	chunked, full := gen(false), gen(true)
	for b := range prompts {
		if !equalInts(chunked[b].IDs, full[b].IDs) {
			t.Fatalf("row %d: chunked prefill chose %v, recomputation %v", b, chunked[b].IDs, full[b].IDs)
		}
	}
	tf, err := m.TeacherForce(prompts[:4], hooks, nil)
	if err != nil {
		t.Fatal(err)
	}
	for b := 0; b < 4; b++ {
		want := tf.Records[b][:len(prompts[b])-1]
		if len(got[b]) != len(want) {
			t.Fatalf("row %d: %d prompt records, want %d", b, len(got[b]), len(want))
		}
		for i := range want {
			for j := range want[i] {
				if d := maxAbsDiff(got[b][i][j].Values, want[i][j].Values); d > 1e-4 {
					t.Fatalf("row %d position %d record %d differs from teacher forcing by %g", b, i, j, d)
				}
			}
		}
	}
}
