package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/sessions"
)

func TestKillDashNineMidTurnKeepsCompletedTurns(t *testing.T) {
	// A random model whose config names no end-of-sequence token: replies run to --max-tokens. It is wide and
	// long enough that a reply lasts seconds: the kill must land while one is being written.
	dir, _ := sftFixture(t)
	rt := torchtest.Runtime(t)
	tied := true
	m, err := model.NewRandom(rt, &model.Config{Architectures: []string{"LlamaForCausalLM"}, HiddenSize: 256, IntermediateSize: 704,
		NumHiddenLayers: 8, NumAttentionHeads: 8, NumKeyValueHeads: 4, VocabSize: 300, RMSNormEps: 1e-5, RopeTheta: 10000,
		MaxPositionEmbeddings: 4096, TieWordEmbeddings: &tied}, model.Options{}, 5)
	if err != nil {
		t.Fatal(err)
	}
	err = m.Save(dir, torch.Float32) // over the fixture's weights and config; its tokenizer stays
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "chat.jsonl")
	cmd := keelCmd("chat", "--model", dir, "--record", file, "--max-tokens", "1500", "--temperature", "0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	stdin.Write([]byte("Count to 3.\n"))
	waitFor(t, "the first reply to finish", 60*time.Second, func() bool {
		raw, _ := os.ReadFile(file)
		return strings.Count(string(raw), `"type":"turn_end"`) >= 2
	})
	stdin.Write([]byte("The little dog\n"))
	// The user turn is fsynced at its end; the reply's tokens are buffered until the reply ends, so kill as soon
	// as the user turn is on disk.
	waitFor(t, "the second user turn", 30*time.Second, func() bool {
		raw, _ := os.ReadFile(file)
		return strings.Count(string(raw), `"type":"turn_end"`) >= 3
	})
	raw, _ := os.ReadFile(file)
	midTurn := strings.Count(string(raw), `"type":"turn_end"`) == 3
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	s, err := sessions.Load(file)
	if err != nil {
		t.Fatalf("the killed session does not load: %v", err)
	}
	turns := s.Turns()
	t.Logf("killed mid-turn: %v; %d events, %d completed turns, warnings %v", midTurn, len(s.Events), len(turns), s.Warnings)
	if !midTurn {
		t.Fatal("the reply finished before the kill: the test did not exercise a turn in flight")
	}
	if len(turns) != 3 || turns[0].Role != "user" || turns[1].Role != "assistant" || turns[1].Text == "" || turns[2].Text != "The little dog" {
		t.Fatalf("completed turns not intact: %+v", turns)
	}
	if len(turns[1].Tokens) == 0 {
		t.Fatal("the completed reply lost its tokens")
	}
}

// The line REPL is the workbench's session: on the embedded model it loads the embedded axis, records every
// token's projections with the model's sha256 and the sampling it ran with, and answers the TUI's commands.
func TestREPLRecordsProjectionsOnTheEmbeddedAxis(t *testing.T) {
	torchtest.Runtime(t)
	file := filepath.Join(t.TempDir(), "chat.jsonl")
	cmd := keelCmd("chat", "--record", file, "--max-tokens", "12", "--temperature", "0.5", "--runs", t.TempDir())
	cmd.Stdin = strings.NewReader("Who are you?\n/cap on\n/steer lots\n/tint\nTell me more.\n/quit\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("keel chat: %v\n%s", err, out)
	}
	for _, want := range []string{"capping at p25 on layers", "/steer lots: give a strength", "projection summaries on", "layer 4 projection: mean"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("the REPL's output lacks %q:\n%s", want, out)
		}
	}
	s, err := sessions.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Header.Layers) != 8 || len(s.Header.ModelSHA256) != 64 || s.Header.Sampling.Temperature != 0.5 {
		t.Fatalf("header: layers %v, model sha %q, sampling %+v", s.Header.Layers, s.Header.ModelSHA256, s.Header.Sampling)
	}
	tokens := 0
	for _, turn := range s.Turns() {
		if turn.Role != "assistant" {
			continue
		}
		for _, tok := range turn.Tokens {
			if len(tok.Proj) != 8 {
				t.Fatalf("a reply token with %d projections", len(tok.Proj))
			}
			tokens++
		}
	}
	if tokens < 12 {
		t.Fatalf("%d reply tokens recorded", tokens)
	}
}

// A trainer given no data says what is missing, and that --model has a default; a missing file is named.
func TestTrainNamesWhatIsMissing(t *testing.T) {
	runs := t.TempDir()
	for args, want := range map[string]string{
		"sft":                    "--data FILE is required (--model defaults to keel's embedded model)",
		"ppo":                    "--prompts FILE is required",
		"sft --data /nope.jsonl": "--data /nope.jsonl: no such file",
	} {
		code, _, stderr := runKeel(append(append([]string{"train"}, strings.Fields(args)...), "--runs", runs)...)
		if code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("keel train %s: exit %d, %q; want %q", args, code, stderr, want)
		}
	}
	if entries, _ := os.ReadDir(runs); len(entries) != 0 {
		t.Fatalf("refused runs left %d folders", len(entries))
	}
}

// The recording tells the truth after every command: a /model after /set temperature 0 records the new model's
// file starting at temperature 0; /mark names the turn the file numbers; `keel sessions show` takes a bare name
// from the sessions folder.
func TestRecordingsTellTheSamplingAndTurns(t *testing.T) {
	torchtest.Runtime(t)
	dir := t.TempDir()
	other, err := models.Persona(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := keelCmd("chat", "--max-tokens", "6", "--runs", t.TempDir())
	cmd.Env = append(cmd.Env, "KEEL_SESSIONS="+filepath.Join(dir, "sessions"))
	cmd.Stdin = strings.NewReader("/set temperature 0\nWho are you?\nAnd then?\n/mark good\n/model " + other + "\nHello.\n/quit\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("keel chat: %v\n%s", err, out)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "sessions", "*.jsonl"))
	if len(files) != 2 {
		t.Fatalf("recordings: %v\n%s", files, out)
	}
	var first, second *sessions.Session
	for _, f := range files {
		s, err := sessions.Load(f)
		if err != nil {
			t.Fatal(err)
		}
		if s.Header.Model == other {
			second = s
		} else {
			first = s
		}
	}
	if first == nil || second == nil {
		t.Fatalf("no recording of each model: %v", files)
	}
	if second.Header.Sampling.Temperature != 0 {
		t.Fatalf("the new model's recording starts at temperature %g after /set temperature 0", second.Header.Sampling.Temperature)
	}
	m := regexp.MustCompile(`marked turn (\d+) "good"`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no /mark answer:\n%s", out)
	}
	for _, e := range first.Events {
		if e.Type == sessions.Marker && strconv.Itoa(e.Turn) != m[1] {
			t.Fatalf("/mark said turn %s, the file says %d", m[1], e.Turn)
		}
	}
	show := keelCmd("sessions", "show", filepath.Base(files[0]), "--dir", filepath.Join(dir, "sessions"))
	if out, err := show.CombinedOutput(); err != nil || !strings.Contains(string(out), "sampling at the start") {
		t.Fatalf("sessions show by bare name: %v\n%s", err, out)
	}
}

// `keel sessions verify` runs a recording again and finds every number: a chat with capping and steering
// switched between turns verifies; the same file with one projection changed does not.
func TestSessionsVerify(t *testing.T) {
	torchtest.Runtime(t)
	file := filepath.Join(t.TempDir(), "chat.jsonl")
	cmd := keelCmd("chat", "--record", file, "--max-tokens", "16", "--runs", t.TempDir())
	cmd.Stdin = strings.NewReader("Who are you?\n/cap on\nTell me more.\n/steer -2\n/cap p50\nAnd then?\n/quit\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("keel chat: %v\n%s", err, out)
	}
	code, stdout, stderr := runKeel("sessions", "verify", file)
	if code != 0 || !strings.Contains(stdout, "verified") {
		t.Fatalf("verify: exit %d\n%s%s", code, stdout, stderr)
	}
	raw, _ := os.ReadFile(file)
	tampered := regexp.MustCompile(`"proj":\[-?[0-9.e+-]+`).ReplaceAllStringFunc(string(raw), func(m string) string {
		v, _ := strconv.ParseFloat(strings.TrimPrefix(m, `"proj":[`), 64)
		return `"proj":[` + strconv.FormatFloat(v+1, 'g', -1, 32)
	})
	bad := filepath.Join(t.TempDir(), "tampered.jsonl")
	os.WriteFile(bad, []byte(tampered), 0o600)
	if code, stdout, _ := runKeel("sessions", "verify", bad); code == 0 || !strings.Contains(stdout, "recorded") {
		t.Fatalf("a tampered recording verified: exit %d\n%s", code, stdout)
	}
}

// recordedPastWindow fails when a recording holds a token past the model's window (a turn's context and its
// reply together).
func recordedPastWindow(t *testing.T, file string, window int) {
	t.Helper()
	s, err := sessions.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	n, replies := 0, 0
	for _, e := range s.Events {
		switch {
		case e.Type == sessions.TurnStart && e.Role == "assistant":
			n, replies = len(e.Context), replies+1
		case e.Type == sessions.Token && e.ID != 0:
			if n++; n > window {
				t.Fatalf("a token recorded at position %d of the %d-position window", n, window)
			}
		}
	}
	if replies == 0 {
		t.Fatal("no reply recorded")
	}
}

// A 40-turn scripted chat in the REPL never decodes past the model's window: it shows the context used as the
// window fills, says so in one line when a reply stops at it or a message cannot fit, and goes on.
func TestREPLLongChatStaysInTheWindow(t *testing.T) {
	torchtest.Runtime(t)
	file := filepath.Join(t.TempDir(), "chat.jsonl")
	var in strings.Builder
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&in, "Tell me a long story about the sea, part %d, with every detail you know.\n", i)
	}
	cmd := keelCmd("chat", "--record", file, "--max-tokens", "120", "--runs", t.TempDir())
	cmd.Stdin = strings.NewReader(in.String())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("keel chat: %v\n%s", err, out)
	}
	for _, want := range []string{"of the model's 1024 positions", "/clear starts afresh"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("the REPL's output lacks %q:\n%s", want, out[max(0, len(out)-2000):])
		}
	}
	recordedPastWindow(t, file, 1024)
}
