package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/steer"
)

// sum is one toy question with its answer: "What is two plus five?", "two plus five is 7.", "7".
type sum struct{ question, answer, number string }

// sums are n toy additions in words, the data every trainer's tests learn from.
func sums(n int) []sum {
	words := []string{"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
	out := make([]sum, n)
	for i := range out {
		a, b := i%10, (i*7+3)%10
		out[i] = sum{fmt.Sprintf("What is %s plus %s?", words[a], words[b]), fmt.Sprintf("%s plus %s is %d.", words[a], words[b], a+b), fmt.Sprint(a + b)}
	}
	return out
}

// writeJSONL writes one JSON line per record.
func writeJSONL(t testing.TB, path string, records []any) string {
	var b strings.Builder
	for _, r := range records {
		raw, _ := json.Marshal(r)
		b.Write(append(raw, '\n'))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// chatData writes a JSONL of arithmetic chats whose answers follow from the questions.
func chatData(t testing.TB, dir string, n int) string {
	var recs []any
	for _, q := range sums(n) {
		recs = append(recs, map[string]any{"messages": []map[string]string{{"role": "user", "content": q.question}, {"role": "assistant", "content": q.answer}}})
	}
	return writeJSONL(t, filepath.Join(dir, "data.jsonl"), recs)
}

// tinyModel writes a random ~4.5M-parameter Llama with a tokenizer trained on the data.
func tinyModel(t testing.TB, rt *torch.Runtime, dir, data string) string {
	raw, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		var r record
		if json.Unmarshal([]byte(line), &r) == nil {
			for _, m := range r.Messages {
				text.WriteString(m["content"].(string) + "\n")
			}
		}
	}
	tj, tc, err := tokenizer.Train(strings.NewReader(text.String()), tokenizer.TrainConfig{VocabSize: 400})
	if err != nil {
		t.Fatal(err)
	}
	mdir := filepath.Join(dir, "model")
	tied := true
	cfg := &model.Config{Architectures: []string{"LlamaForCausalLM"}, HiddenSize: 256, IntermediateSize: 688, NumHiddenLayers: 6,
		NumAttentionHeads: 8, NumKeyValueHeads: 4, VocabSize: 400, RMSNormEps: 1e-5, RopeTheta: 10000, MaxPositionEmbeddings: 512, TieWordEmbeddings: &tied}
	m, err := model.NewRandom(rt, cfg, model.Options{}, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Small initial weights, as a freshly initialised model has, so the loss starts near log(vocab).
	s := rt.NewScope().NoGrad()
	for _, p := range m.Names {
		if strings.HasSuffix(p.Name, "norm.weight") {
			continue
		}
		s.CopyInto(p.Tensor, s.MulScalar(p.Tensor, 0.1))
	}
	s.Close()
	if err := m.Save(mdir, torch.Float32); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(mdir, "tokenizer.json"), tj, 0o644)
	os.WriteFile(filepath.Join(mdir, "tokenizer_config.json"), tc, 0o644)
	return mdir
}

func TestSFTLowersHeldOutLoss(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data := chatData(t, dir, 200)
	mdir := tinyModel(t, rt, dir, data)
	run, err := NewRun(filepath.Join(dir, "runs"), "sft")
	if err != nil {
		t.Fatal(err)
	}
	cfg := SFTConfig{ModelNameOrPath: mdir, DatasetPath: data, MaxSteps: 40, LearningRate: 2e-3, PerDeviceTrainBatchSize: 8,
		MaxSeqLength: 64, EvalFraction: 0.1, EvalSteps: 20, SaveSteps: 20, Seed: 1}
	if err := RunSFT(context.Background(), rt, run, cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	ms, _ := run.ReadMetrics()
	var evals []float64
	for _, m := range ms {
		if m.EvalLoss != nil {
			evals = append(evals, *m.EvalLoss)
		}
	}
	if len(evals) < 2 {
		t.Fatalf("eval losses: %v", evals)
	}
	first, last := evals[0], evals[len(evals)-1]
	t.Logf("held-out loss %.3f -> %.3f over %d steps", first, last, cfg.MaxSteps)
	if last > first-1.0 {
		t.Fatalf("held-out loss fell only from %.3f to %.3f", first, last)
	}
	st, _ := run.ReadState()
	if st.State != Done || st.Final == "" {
		t.Fatalf("state %+v", st)
	}
	// The final folder loads and generates.
	lm, err := model.Load(rt, st.Final, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	hf := lm.Tokenizer.(*tokenizer.HF)
	prompt, _ := hf.ApplyChatTemplate([]tokenizer.TemplateMessage{{"role": "user", "content": "What is two plus three?"}}, tokenizer.ChatOptions{AddGenerationPrompt: true})
	res, err := lm.GenerateText(context.Background(), [][]int{hf.Encode(prompt, false)}, model.TextConfig{GenerateConfig: model.GenerateConfig{MaxTokens: 12}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after SFT: %q", res[0].Text)
	if _, err := os.Stat(filepath.Join(run.Dir, "loss.png")); err != nil {
		t.Errorf("loss.png: %v", err)
	}
	if _, err := os.Stat(filepath.Join(run.Dir, "metrics.csv")); err != nil {
		t.Errorf("metrics.csv: %v", err)
	}
}

func TestLoRATrainsOnlyAdapters(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data := chatData(t, dir, 100)
	mdir := tinyModel(t, rt, dir, data)
	run, _ := NewRun(filepath.Join(dir, "runs"), "sft")
	cfg := SFTConfig{ModelNameOrPath: mdir, DatasetPath: data, MaxSteps: 10, LearningRate: 5e-3, PerDeviceTrainBatchSize: 4,
		MaxSeqLength: 48, EvalFraction: 0.1, SaveSteps: 5, Seed: 2, LoRA: &model.LoRAConfig{R: 4, Alpha: 8, TargetModules: []string{"q", "v"}}}
	// Watch the base weights through the trainer's own model: capture them before and after via the hook.
	if err := RunSFT(context.Background(), rt, run, cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	// The adapter checkpoint holds only adapter tensors; the merged final differs from the base exactly in q and v.
	st, _ := run.ReadState()
	base, _ := model.Load(rt, mdir, model.Options{})
	defer base.Close()
	merged, err := model.Load(rt, st.Final, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer merged.Close()
	s := rt.NewScope()
	defer s.Close()
	for i, n := range base.Names {
		a, b := s.Float32s(n.Tensor), s.Float32s(merged.Names[i].Tensor)
		diff := 0.0
		for j := range a {
			diff = math.Max(diff, math.Abs(float64(a[j]-b[j])))
		}
		isTarget := strings.Contains(n.Name, "q_proj") || strings.Contains(n.Name, "v_proj")
		if isTarget && diff == 0 {
			t.Errorf("%s unchanged although LoRA targets it", n.Name)
		}
		if !isTarget && diff != 0 {
			t.Errorf("%s changed by %g although only adapters train", n.Name, diff)
		}
	}
	ad, err := os.ReadFile(filepath.Join(st.Final, "adapter", "adapter_config.json"))
	if err != nil || !strings.Contains(string(ad), `"r": 4`) {
		t.Fatalf("adapter_config.json: %s %v", ad, err)
	}
	// Both the final folder and the step-5 checkpoint, made into a model folder, descend from the base weights;
	// the checkpoint's model has its own q and v, between the base's and the final's.
	baseFP, _ := steer.WeightsFingerprint(mdir)
	ckpt, err := CheckpointDir(run.Dir, 5)
	if err != nil {
		t.Fatal(err)
	}
	ckModel, err := CheckpointModel(rt, ckpt)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{st.Final, ckModel} {
		lin, err := steer.ReadLineage(dir)
		if err != nil || len(lin.Ancestors) != 1 || lin.Ancestors[0] != baseFP {
			t.Fatalf("%s: lineage %+v (%v), want the base's fingerprint %.12s", dir, lin, err, baseFP)
		}
	}
	fromCkpt, err := model.Load(rt, ckModel, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer fromCkpt.Close()
	for i, n := range base.Names {
		b, c, f := s.Float32s(n.Tensor), s.Float32s(fromCkpt.Names[i].Tensor), s.Float32s(merged.Names[i].Tensor)
		fromBase, fromFinal := 0.0, 0.0
		for j := range b {
			fromBase = math.Max(fromBase, math.Abs(float64(c[j]-b[j])))
			fromFinal = math.Max(fromFinal, math.Abs(float64(c[j]-f[j])))
		}
		isTarget := strings.Contains(n.Name, "q_proj") || strings.Contains(n.Name, "v_proj")
		if isTarget && (fromBase == 0 || fromFinal == 0) || !isTarget && fromBase != 0 {
			t.Errorf("%s: checkpoint model differs from the base by %g and from the final by %g", n.Name, fromBase, fromFinal)
		}
	}
	if _, err := CheckpointDir(run.Dir, 7); err == nil || !strings.Contains(err.Error(), "[5]") {
		t.Fatalf("a step with no checkpoint: %v", err)
	}
}

func TestBadDatasetsAreClearErrors(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data := chatData(t, dir, 20)
	mdir := tinyModel(t, rt, dir, data)
	lm, err := model.Load(rt, mdir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	cases := map[string]string{
		"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n{not json}\n": "data.jsonl:2",
		"{\"prompt\": \"x\"}\n": "data.jsonl:1: needs \"messages\"",
		"\n\n":                  "empty",
		"{\"messages\": [{\"content\": \"no role\"}]}\n": "data.jsonl:1: message 0 needs",
		"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n{\"messages\": [{\"role\": \"system\", \"content\": \"be\"}]}\n": "no example has a token to learn",
	}
	for body, want := range cases {
		p := filepath.Join(dir, "data.jsonl")
		os.WriteFile(p, []byte(body), 0o644)
		_, err := LoadDataset(p, lm.Tokenizer)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", body, err, want)
		}
	}
}

func TestBF16AutocastTrains(t *testing.T) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data := chatData(t, dir, 100)
	mdir := tinyModel(t, rt, dir, data)
	run, _ := NewRun(filepath.Join(dir, "runs"), "sft")
	cfg := SFTConfig{ModelNameOrPath: mdir, DatasetPath: data, MaxSteps: 20, LearningRate: 2e-3, PerDeviceTrainBatchSize: 8,
		MaxSeqLength: 64, EvalFraction: 0.1, EvalSteps: 10, Seed: 1, BF16: true}
	if err := RunSFT(context.Background(), rt, run, cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	ms, _ := run.ReadMetrics()
	var evals []float64
	for _, m := range ms {
		if m.EvalLoss != nil {
			evals = append(evals, *m.EvalLoss)
		}
	}
	t.Logf("bf16 autocast: held-out loss %.3f -> %.3f", evals[0], evals[len(evals)-1])
	if evals[len(evals)-1] > evals[0]-1 {
		t.Fatalf("autocast training did not learn: %v", evals)
	}
}

// Job control knows a run's process by pid and start time: a reused pid (a stranger now) is never signalled, and
// the run reads as failed.
func TestJobControlNeverSignalsAStranger(t *testing.T) {
	stranger := exec.Command("sleep", "30")
	if err := stranger.Start(); err != nil {
		t.Fatal(err)
	}
	defer stranger.Process.Kill()
	start, ok := processStart(stranger.Process.Pid)
	if !ok || start == 0 {
		t.Fatalf("start time of a live process: %d %v", start, ok)
	}
	run, err := NewRun(t.TempDir(), "sft")
	if err != nil {
		t.Fatal(err)
	}
	// The state names the stranger's pid with another start time, as after a reboot.
	run.WriteState(State{ID: run.ID, Kind: "sft", State: Running, PID: stranger.Process.Pid, PIDStart: start + 1})
	if st, _ := run.ReadState(); st.State != Failed {
		t.Fatalf("a run whose pid was reused reads as %s", st.State)
	}
	if err := run.RequestCancel(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if syscall.Kill(stranger.Process.Pid, 0) != nil {
		t.Fatal("cancel signalled a process that is not the run's")
	}
	// With its own start time the same process is the run's owner.
	run.WriteState(State{ID: run.ID, Kind: "sft", State: Running, PID: stranger.Process.Pid, PIDStart: start})
	if st, _ := run.ReadState(); st.State != Running {
		t.Fatalf("the owner alive reads as %s", st.State)
	}
}
