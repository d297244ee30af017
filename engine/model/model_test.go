package model_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/model/modeltest"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
)

func stories(t *testing.T) *model.LM { return modeltest.Stories(t) }

// knownSample is the greedy output stories260K.md records (the code block after the `-t 0.0` command).
func knownSample(t *testing.T) string {
	raw, err := os.ReadFile(filepath.Join(torchtest.Fixtures(t), "stories260k", "stories260K.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)-t 0\\.0\n(.*?)\n```").FindSubmatch(raw)
	if m == nil {
		t.Fatal("stories260K.md: greedy sample not found")
	}
	return string(m[1])
}

func TestStories260KGreedyMatchesKnownOutput(t *testing.T) {
	lm := stories(t)
	want := knownSample(t)
	res, err := lm.GenerateText(context.Background(), [][]int{{1}}, model.TextConfig{GenerateConfig: model.GenerateConfig{MaxTokens: 256}})
	if err != nil {
		t.Fatal(err)
	}
	got := res[0].Text
	if len(res[0].IDs) < 200 {
		t.Fatalf("only %d tokens generated (%s)", len(res[0].IDs), res[0].Reason)
	}
	if got != want {
		t.Fatalf("greedy output differs from stories260K.md\n got: %q\nwant: %q", got, want)
	}
	t.Logf("%d tokens identical to the known sample (stopped: %s)", len(res[0].IDs), res[0].Reason)
	// The plain-Go llama2.c loop that other tests use as a reference reproduces the same story.
	ref := modeltest.StoriesReference(t).Greedy([]int{1}, len(res[0].IDs), nil)
	if !equalInts(ref, res[0].IDs) {
		t.Fatalf("the llama2.c reference loop's greedy ids differ from keel's:\n ref  %v\n keel %v", ref, res[0].IDs)
	}
}

func TestStories260KTokenizerRoundTrip(t *testing.T) {
	lm := stories(t)
	text := "Once upon a time, there was a little girl named Lily."
	ids := lm.Tokenizer.Encode(text, true)
	if ids[0] != 1 || len(ids) > 20 {
		t.Fatalf("encode: %v", ids)
	}
	if got := tokenizer.Decode(lm.Tokenizer, ids); got != text {
		t.Fatalf("decode(encode) = %q", got)
	}
	// Text outside the 512-token vocabulary goes through byte fallback and still round-trips.
	odd := "Zoë 🙂 naïve"
	if got := tokenizer.Decode(lm.Tokenizer, lm.Tokenizer.Encode(odd, true)); got != odd {
		t.Fatalf("byte fallback round trip = %q", got)
	}
}

func randomUnit(d int, seed uint64) []float32 { return modeltest.Unit(d, seed) }

func TestCappedGenerationCacheEqualsRecompute(t *testing.T) {
	lm := stories(t)
	u := randomUnit(lm.HiddenSize(), 7)
	layers := []int{1, 2, 3}
	// tau: the median projection of the uncapped continuation at the first capped layer.
	var capture []model.Intervention
	for _, l := range layers {
		capture = append(capture, model.Intervention{Layer: l, Kind: model.Capture, Vectors: [][]float32{u}})
	}
	var projs []float64
	_, err := lm.Generate(context.Background(), [][]int{{1}}, model.GenerateConfig{MaxTokens: 64, Hooks: model.NewHooks(capture...),
		OnStep: func(st model.Step) (bool, error) {
			projs = append(projs, float64(st.Records[0].Values[0]))
			return false, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	sort.Float64s(projs)
	tau := projs[len(projs)/2]
	var caps []model.Intervention
	for _, l := range layers {
		caps = append(caps, model.Intervention{Layer: l, Kind: model.Cap, Vectors: [][]float32{u}, Tau: tau})
	}
	run := func(noCache bool) ([]int, []float32) {
		var moved []float32
		res, err := lm.Generate(context.Background(), [][]int{{1}}, model.GenerateConfig{MaxTokens: 64, NoCache: noCache, EOS: []int{-1},
			Hooks: model.NewHooks(caps...),
			OnStep: func(st model.Step) (bool, error) {
				for _, r := range st.Records {
					moved = append(moved, r.Values[0])
				}
				return false, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		return res[0].IDs, moved
	}
	cached, movedCached := run(false)
	full, movedFull := run(true)
	if len(cached) != 64 || len(full) != 64 {
		t.Fatalf("lengths %d, %d", len(cached), len(full))
	}
	active := 0
	for i := range cached {
		if cached[i] != full[i] {
			t.Fatalf("token %d: cached %d, recomputed %d", i, cached[i], full[i])
		}
	}
	for i := range movedCached {
		if math.Abs(float64(movedCached[i]-movedFull[i])) > 1e-4 {
			t.Fatalf("cap movement %d: cached %v, recomputed %v", i, movedCached[i], movedFull[i])
		}
		if movedCached[i] != 0 {
			active++
		}
	}
	if active == 0 {
		t.Fatal("the cap never moved the residual stream: the test would prove nothing")
	}
	uncapped := tokensOf(t, lm, nil, 64)
	if equalInts(uncapped, cached) {
		t.Fatal("capping at the median did not change the greedy continuation")
	}
	t.Logf("tau %.4f: cap active at %d of %d token-layers; capped continuation differs from uncapped", tau, active, len(movedCached))
}

func tokensOf(t *testing.T, lm *model.LM, hooks *model.Hooks, n int) []int {
	res, err := lm.Generate(context.Background(), [][]int{{1}}, model.GenerateConfig{MaxTokens: n, EOS: []int{-1}, Hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	return res[0].IDs
}

func equalInts(a, b []int) bool {
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

func TestSteeringByZeroIsBitIdentical(t *testing.T) {
	lm := stories(t)
	u := randomUnit(lm.HiddenSize(), 3)
	seq := lm.Tokenizer.Encode("Once upon a time, there was a little dog.", true)
	plain, err := lm.Logits(seq, nil)
	if err != nil {
		t.Fatal(err)
	}
	zero, err := lm.Logits(seq, model.NewHooks(model.Intervention{Layer: 2, Kind: model.Add, Vectors: [][]float32{u}, Coeff: 0}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range plain {
		if math.Float32bits(plain[i]) != math.Float32bits(zero[i]) {
			t.Fatalf("logit %d: %v without steering, %v steered by 0", i, plain[i], zero[i])
		}
	}
	steered, err := lm.Logits(seq, model.NewHooks(model.Intervention{Layer: 2, Kind: model.Add, Vectors: [][]float32{u}, Coeff: 4}))
	if err != nil {
		t.Fatal(err)
	}
	diff := 0.0
	for i := range plain {
		diff = math.Max(diff, math.Abs(float64(plain[i]-steered[i])))
	}
	if diff < 1e-3 {
		t.Fatalf("steering by 4 changed no logit (max diff %g)", diff)
	}
}

func TestCaptureMatchesHandProjection(t *testing.T) {
	lm := stories(t)
	u := randomUnit(lm.HiddenSize(), 11)
	seq := lm.Tokenizer.Encode("The cat sat.", true)
	tf, err := lm.TeacherForce([][]int{seq}, model.NewHooks(
		model.Intervention{Layer: 4, Kind: model.Capture, Full: true},
		model.Intervention{Layer: 4, Kind: model.Capture, Vectors: [][]float32{u}},
	), [][2]int{{1, len(seq)}})
	if err != nil {
		t.Fatal(err)
	}
	mean := make([]float64, lm.HiddenSize())
	var meanNorm float64
	for pos, recs := range tf.Records[0] {
		full, proj := recs[0].Values, recs[1].Values[0]
		var dot, sq float64
		for i := range full {
			dot += float64(full[i]) * float64(u[i])
			sq += float64(full[i]) * float64(full[i])
			if pos >= 1 {
				mean[i] += float64(full[i]) / float64(len(seq)-1)
			}
		}
		if pos >= 1 {
			meanNorm += math.Sqrt(sq) / float64(len(seq)-1)
		}
		if math.Abs(dot-float64(proj)) > 1e-4 {
			t.Fatalf("position %d: captured projection %v, hand dot product %v", pos, proj, dot)
		}
	}
	for i := range mean {
		if math.Abs(mean[i]-float64(tf.Means[0][4][i])) > 1e-4 {
			t.Fatalf("span mean[%d] = %v, by hand %v", i, tf.Means[0][4][i], mean[i])
		}
	}
	if math.Abs(meanNorm-float64(tf.Norms[0][4])) > 1e-3*meanNorm {
		t.Fatalf("span mean norm %v, by hand %v", tf.Norms[0][4], meanNorm)
	}
	if len(tf.Logprobs[0]) != len(seq)-1 {
		t.Fatalf("%d logprobs for %d tokens", len(tf.Logprobs[0]), len(seq))
	}
}

func TestSamplingIsSeededAndCancellable(t *testing.T) {
	lm := stories(t)
	cfg := model.GenerateConfig{MaxTokens: 40, Sampling: model.Sampling{Temperature: 0.9, TopP: 0.9, TopK: 40, MinP: 0.02, RepetitionPenalty: 1.1, Seed: 5}}
	a, err := lm.Generate(context.Background(), [][]int{{1}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := lm.Generate(context.Background(), [][]int{{1}}, cfg)
	if !equalInts(a[0].IDs, b[0].IDs) {
		t.Fatal("same seed, different samples")
	}
	cfg.Seed = 6
	c, _ := lm.Generate(context.Background(), [][]int{{1}}, cfg)
	if equalInts(a[0].IDs, c[0].IDs) {
		t.Fatal("different seeds gave identical 40-token samples")
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	cfg.OnStep = func(model.Step) (bool, error) {
		n++
		if n == 5 {
			cancel()
		}
		return false, nil
	}
	res, err := lm.Generate(ctx, [][]int{{1}}, cfg)
	if err == nil || res[0].Reason != "cancelled" || len(res[0].IDs) != 5 {
		t.Fatalf("cancel: err %v, reason %q, %d tokens", err, res[0].Reason, len(res[0].IDs))
	}
}

func TestStopStrings(t *testing.T) {
	lm := stories(t)
	res, err := lm.GenerateText(context.Background(), [][]int{{1}}, model.TextConfig{GenerateConfig: model.GenerateConfig{MaxTokens: 100}, Stop: []string{"Lily."}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Reason != "stop" || !strings.HasSuffix(res[0].Text, "Lily.") {
		t.Fatalf("stop string: reason %q, text %q", res[0].Reason, res[0].Text)
	}
}

// An empty prompt is refused in one line by the text path too (it used to index past the end).
func TestGenerateTextRefusesAnEmptyPrompt(t *testing.T) {
	lm := stories(t)
	_, err := lm.GenerateText(context.Background(), [][]int{{1}, {}}, model.TextConfig{GenerateConfig: model.GenerateConfig{MaxTokens: 4}})
	if err == nil || !strings.Contains(err.Error(), "prompt 1 is empty") {
		t.Fatalf("empty prompt: %v", err)
	}
}

// A max-tokens far past the context window generates at most a window's worth instead of allocating for it.
func TestMaxTokensIsBoundedByTheWindow(t *testing.T) {
	lm := stories(t)
	window := lm.Config.MaxPositionEmbeddings
	res, err := lm.Generate(context.Background(), [][]int{{1}}, model.GenerateConfig{MaxTokens: 1_000_000_000, EOS: []int{-1}})
	if err != nil || len(res[0].IDs) != window || res[0].Reason != "length" {
		t.Fatalf("max-tokens 1e9: %v, %d tokens (%s), window %d", err, len(res[0].IDs), res[0].Reason, window)
	}
}

// f16 on the CPU either works or says in one line what to use instead (libtorch builds differ).
func TestF16OnTheCPUIsClear(t *testing.T) {
	rt := torchtest.Runtime(t)
	lm, err := model.Load(rt, modeltest.StoriesDir(t), model.Options{DType: torch.Float16})
	if err != nil {
		if !strings.Contains(err.Error(), "use f32 or bf16") {
			t.Fatalf("f16 on the CPU: %v", err)
		}
		return
	}
	defer lm.Close()
	if _, err := lm.Generate(context.Background(), [][]int{{1}}, model.GenerateConfig{MaxTokens: 4}); err != nil {
		t.Fatalf("f16 loaded but does not generate: %v", err)
	}
}

// A token id outside the vocabulary (a hand-edited session, say) is one error from teacher forcing, not a panic.
func TestTeacherForceRefusesUnknownIDs(t *testing.T) {
	lm := stories(t)
	_, err := lm.TeacherForce([][]int{{1, 5, 9}, {1, 70000, 3}}, nil, [][2]int{{1, 3}, {1, 3}})
	if err == nil || !strings.Contains(err.Error(), "70000 outside the vocabulary") {
		t.Fatalf("out-of-vocabulary id: %v", err)
	}
}

// Long padded batches take the blocked attention path (queries in blocks of 128, each against the keys it may
// see, with the padding mask narrowed per block): every row's teacher-forced log-probs equal the plain-Go llama2.c
// loop's, token by token, across the block boundaries.
func TestLongPaddedBatchMatchesReferenceLoop(t *testing.T) {
	lm := stories(t)
	ref := modeltest.StoriesReference(t)
	long := ref.Greedy([]int{1}, 299, nil) // 300 positions: three query blocks
	long = append([]int{1}, long...)
	short := append([]int{1}, long[1:170]...) // padded by 130 in the batch: the mask crosses a block edge
	tf, err := lm.TeacherForce([][]int{long, short}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	V := lm.Config.VocabSize
	for r, seq := range [][]int{long, short} {
		refModel := modeltest.StoriesReference(t)
		worst := 0.0
		for i := 0; i+1 < len(seq); i++ {
			logits := refModel.Forward(seq[i], i, nil)
			want := float64(logits[seq[i+1]]) - logSumExp(logits[:V])
			worst = math.Max(worst, math.Abs(want-float64(tf.Logprobs[r][i])))
		}
		if worst > 1e-3 {
			t.Fatalf("row %d (%d tokens): teacher-forced log-probs differ from the reference loop by %g", r, len(seq), worst)
		}
		t.Logf("row %d, %d tokens: max |log-prob difference| %.2g", r, len(seq), worst)
	}
}

// Sliding-window architectures over sequences longer than one attention block: a padded batch equals each row
// alone (the window and the padding masks narrowed per block agree with the unpadded row's).
func TestLongSlidingWindowBatchEqualsSingle(t *testing.T) {
	rt := torchtest.Runtime(t)
	for _, name := range []string{"mistral", "gemma2"} {
		cfg, ok := model.TinyConfigs()[name]
		if !ok {
			t.Fatalf("no tiny %s config", name)
		}
		m, err := model.NewRandom(rt, cfg, model.Options{}, 7)
		if err != nil {
			t.Fatal(err)
		}
		long, short := testPrompt(290, cfg.VocabSize, 1), testPrompt(150, cfg.VocabSize, 2)
		batch, err := m.TeacherForce([][]int{long, short}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for r, seq := range [][]int{long, short} {
			alone, err := m.TeacherForce([][]int{seq}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d := maxAbsDiff(batch.Logprobs[r], alone.Logprobs[0]); d > 1e-4 {
				t.Fatalf("%s row %d: padded batch differs from the row alone by %g", name, r, d)
			}
		}
		m.Close()
	}
}

// BenchmarkStoriesDecode is keel's greedy decode on stories260K, one thread, per token (for profilers; the
// figure against the plain C loop is `keel bench decode --llama2c`).
func BenchmarkStoriesDecode(b *testing.B) {
	lm := modeltest.Stories(b)
	if err := lm.RT.SetNumThreads(1); err != nil {
		b.Fatal(err)
	}
	prompt := lm.Tokenizer.Encode("Once upon a time", true)
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(256, b.N-done+1)
		if _, err := lm.Generate(context.Background(), [][]int{prompt}, model.GenerateConfig{MaxTokens: n, EOS: []int{-1}}); err != nil {
			b.Fatal(err)
		}
		done += n
	}
}
