package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
	"github.com/keel-lab/keel/train"
)

// TestMain lets the tests run this binary as `keel` in child processes (KEEL_TEST_MAIN=1).
func TestMain(m *testing.M) {
	if os.Getenv("KEEL_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func keelCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "KEEL_TEST_MAIN=1")
	return cmd
}

// sftFixture writes a small chat dataset and a random model with a tokenizer trained on it.
func sftFixture(t *testing.T) (modelDir, data string) {
	rt := torchtest.Runtime(t)
	dir := t.TempDir()
	data = filepath.Join(dir, "data.jsonl")
	var sb, text strings.Builder
	for i := 0; i < 120; i++ {
		q, a := fmt.Sprintf("Count to %d.", i%9+1), strings.TrimSpace(strings.Repeat("one ", i%9+1))
		raw, _ := json.Marshal(map[string]any{"messages": []map[string]string{{"role": "user", "content": q}, {"role": "assistant", "content": a}}})
		sb.Write(append(raw, '\n'))
		text.WriteString(q + "\n" + a + "\n")
	}
	os.WriteFile(data, []byte(sb.String()), 0o644)
	tj, tc, err := tokenizer.Train(strings.NewReader(text.String()), tokenizer.TrainConfig{VocabSize: 300})
	if err != nil {
		t.Fatal(err)
	}
	tied := true
	cfg := &model.Config{Architectures: []string{"LlamaForCausalLM"}, HiddenSize: 64, IntermediateSize: 160, NumHiddenLayers: 2,
		NumAttentionHeads: 4, NumKeyValueHeads: 2, VocabSize: 300, RMSNormEps: 1e-5, RopeTheta: 10000, MaxPositionEmbeddings: 256, TieWordEmbeddings: &tied}
	m, err := model.NewRandom(rt, cfg, model.Options{}, 5)
	if err != nil {
		t.Fatal(err)
	}
	modelDir = filepath.Join(dir, "model")
	if err := m.Save(modelDir, torch.Float32); err != nil {
		t.Fatal(err)
	}
	m.Close()
	os.WriteFile(filepath.Join(modelDir, "tokenizer.json"), tj, 0o644)
	os.WriteFile(filepath.Join(modelDir, "tokenizer_config.json"), tc, 0o644)
	return modelDir, data
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func finalLoss(t *testing.T, runs, id string) float64 {
	run, err := train.OpenRun(runs, id)
	if err != nil {
		t.Fatal(err)
	}
	st, err := run.ReadState()
	if err != nil || st.State != train.Done {
		t.Fatalf("run %s: %+v %v", id, st, err)
	}
	ms, _ := run.ReadMetrics()
	return ms[len(ms)-1].Loss
}

func TestKillDashNineThenResume(t *testing.T) {
	modelDir, data := sftFixture(t)
	runs := t.TempDir()
	args := []string{"train", "sft", "--model", modelDir, "--data", data, "--steps", "60", "--batch", "4", "--seq-len", "48",
		"--save-every", "5", "--eval-every", "1000", "--lr", "3e-3", "--seed", "9", "--runs", runs}
	// The uninterrupted reference run.
	ref := keelCmd(args...)
	if out, err := ref.CombinedOutput(); err != nil {
		t.Fatalf("reference run: %v\n%s", err, out)
	}
	states, _ := train.ListRuns(runs)
	refLoss := finalLoss(t, runs, states[0].ID)

	// The same run detached, killed with SIGKILL after its second checkpoint, then resumed.
	out, err := keelCmd(append(args, "--detach")...).Output()
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(string(out))
	run, err := train.OpenRun(runs, id)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "step 12", 60*time.Second, func() bool { st, _ := run.ReadState(); return st.Step >= 12 })
	st, _ := run.ReadState()
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed process to be seen as gone", 10*time.Second, func() bool { s, _ := run.ReadState(); return s.State == train.Failed })
	killedAt := st.Step
	res := keelCmd("train", "sft", "--resume", id, "--runs", runs)
	if out, err := res.CombinedOutput(); err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	got := finalLoss(t, runs, id)
	t.Logf("killed at step %d; final loss %.6f resumed vs %.6f uninterrupted", killedAt, got, refLoss)
	if d := got/refLoss - 1; d > 0.01 || d < -0.01 {
		t.Fatalf("resumed final loss %.6f differs from uninterrupted %.6f by more than 1%%", got, refLoss)
	}
}

func TestAnotherProcessWatchesADetachedRun(t *testing.T) {
	modelDir, data := sftFixture(t)
	runs := t.TempDir()
	out, err := keelCmd("train", "sft", "--model", modelDir, "--data", data, "--steps", "400", "--batch", "4", "--seq-len", "48",
		"--runs", runs, "--detach").Output()
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(string(out))
	run, _ := train.OpenRun(runs, id)
	waitFor(t, "the run to start", 60*time.Second, func() bool { st, _ := run.ReadState(); return st.Step >= 2 })
	list, err := keelCmd("jobs", "list", "--runs", runs).Output()
	if err != nil || !strings.Contains(string(list), id) || !strings.Contains(string(list), "running") {
		t.Fatalf("jobs list: %s %v", list, err)
	}
	// Watch from a second process until it has seen the step advance, then cancel from a third.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	watch := keelCmd("jobs", "watch", id, "--runs", runs)
	var buf bytes.Buffer
	watch.Stdout = &buf
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	var first, last int
	waitFor(t, "watched metrics to advance", 60*time.Second, func() bool {
		var steps []int
		for _, line := range strings.Split(buf.String(), "\n") {
			var s int
			if n, _ := fmt.Sscanf(line, "step %d/", &s); n == 1 {
				steps = append(steps, s)
			}
		}
		if len(steps) >= 2 {
			first, last = steps[0], steps[len(steps)-1]
		}
		return len(steps) >= 2 && last > first
	})
	// A second writer is refused while the run's process lives, and the run goes on untouched.
	if out, err := keelCmd("train", "sft", "--resume", id, "--runs", runs).CombinedOutput(); err == nil || !strings.Contains(string(out), "is being trained by process") {
		t.Fatalf("resume of a live run: %v %s", err, out)
	}
	// Pause from another process: the run holds in the paused state and its step stops; resume lets it go on.
	if out, err := keelCmd("jobs", "pause", id, "--runs", runs).CombinedOutput(); err != nil {
		t.Fatalf("pause: %v %s", err, out)
	}
	var held train.State
	waitFor(t, "the run to pause", 30*time.Second, func() bool { held, _ = run.ReadState(); return held.State == train.Paused })
	time.Sleep(1500 * time.Millisecond)
	if st, _ := run.ReadState(); st.State != train.Paused || st.Step != held.Step {
		t.Fatalf("a paused run moved: %+v, paused at step %d", st, held.Step)
	}
	if list, _ := keelCmd("jobs", "list", "--runs", runs).Output(); !strings.Contains(string(list), "paused") {
		t.Fatalf("jobs list does not show the pause: %s", list)
	}
	if out, err := keelCmd("jobs", "resume", id, "--runs", runs).CombinedOutput(); err != nil {
		t.Fatalf("resume: %v %s", err, out)
	}
	waitFor(t, "the run to go on after resume", 60*time.Second, func() bool {
		st, _ := run.ReadState()
		return st.State == train.Running && st.Step > held.Step
	})
	if out, err := keelCmd("jobs", "cancel", id, "--runs", runs).CombinedOutput(); err != nil {
		t.Fatalf("cancel: %v %s", err, out)
	}
	done := make(chan error, 1)
	go func() { done <- watch.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("watch: %v\n%s", err, buf.String())
		}
	case <-ctx.Done():
		watch.Process.Kill()
		t.Fatal("watch did not end after cancel")
	}
	st, _ := run.ReadState()
	if st.State != train.Cancelled {
		t.Fatalf("state after cancel: %+v\n%s", st, buf.String())
	}
	t.Logf("watcher saw steps %d..%d; run cancelled at step %d with checkpoint %s", first, last, st.Step, filepath.Base(st.Checkpoint))
}
