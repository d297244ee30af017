package workbench_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/workbench"
)

// persona is a session on keel's embedded model with its axis, recording to a file in the test's folder.
func persona(t *testing.T, maxTokens int) (*workbench.Session, string) {
	t.Helper()
	rt := torchtest.Runtime(t)
	dir, err := models.Persona(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	axis := filepath.Join(dir, "axis") // models.Persona unpacks the axis beside the weights
	lm, err := model.Load(rt, dir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "chat.jsonl")
	sampling := workbench.Sampling{Temperature: 0.7, TopP: 0.9, MaxTokens: maxTokens, Seed: 3}
	b, err := workbench.NewLMBackend(lm, workbench.LMConfig{Device: "cpu", DType: "f32", AxisPath: axis, Record: true, RecordPath: path,
		Version: "test", Sampling: sampling, Term: sessions.Term{Cols: 160, Rows: 48}})
	if err != nil {
		lm.Close()
		t.Fatal(err)
	}
	s := workbench.New(b, workbench.Options{Sampling: sampling, Controls: workbench.DefaultControls(lm.NumLayers())})
	t.Cleanup(func() { s.Close() })
	return s, path
}

// The recording says what the chat was: the sampling and terminal it ran with, the model's sha256, the axis's
// layers with every token's projections, the system prompt, setting changes, clears and a stopped reply.
func TestRecordingTellsTheTruth(t *testing.T) {
	s, path := persona(t, 24)
	for _, line := range []string{"/system You are a helpful assistant.", "/set temperature 0.3", "/cap on"} {
		s.Run(line)
	}
	if _, err := s.Send(context.Background(), "Who are you?", nil); err != nil {
		t.Fatal(err)
	}
	s.Run("/clear")
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	s.Send(ctx, "Tell me a story.", func(workbench.Token) {
		if n++; n == 3 {
			cancel()
		}
	})
	s.Close()
	rec, err := sessions.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	h := rec.Header
	if h.Sampling.Temperature != 0.7 || h.Sampling.TopP != 0.9 || h.Seed != 3 || h.Term.Cols != 160 || h.Term.Rows != 48 {
		t.Fatalf("header sampling %+v seed %d term %+v", h.Sampling, h.Seed, h.Term)
	}
	if len(h.ModelSHA256) != 64 || len(h.ModelFingerprint) != 64 || len(h.Layers) != 8 || h.Axis == "" {
		t.Fatalf("header model sha %q, layers %v, axis %q", h.ModelSHA256, h.Layers, h.Axis)
	}
	log := strings.Join(rec.Log(), "\n")
	for _, want := range []string{"[1] system: You are a helpful assistant.", "temperature = 0.3", "interventions: cap layers_", "[2] user: Who are you?",
		"chat cleared", "user: Tell me a story.", "the reply above was stopped by the user"} {
		if !strings.Contains(log, want) {
			t.Errorf("the recording's log lacks %q:\n%s", want, log)
		}
	}
	tokens := 0
	for _, e := range rec.Events {
		if e.Type == sessions.Token && e.ID != 0 {
			tokens++
			if len(e.Proj) != 8 {
				t.Fatalf("a token with %d projections", len(e.Proj))
			}
		}
	}
	if tokens < 10 {
		t.Fatalf("%d generated tokens recorded", tokens)
	}
}

func residentMiB(t *testing.T) float64 {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	pages, _ := strconv.ParseFloat(strings.Fields(string(raw))[1], 64)
	return pages * float64(os.Getpagesize()) / (1 << 20)
}

// Resident memory stays flat over a 30-turn chat with a paste of most of the model's window and a /clear: what a
// turn's prefill frees goes back to the system (the oldest turns go as the window fills).
func TestLongChatMemoryIsFlat(t *testing.T) {
	s, _ := persona(t, 16)
	s.Run("/set context drop-oldest")
	var rss []float64
	for turn := 0; turn < 30; turn++ {
		msg := fmt.Sprintf("Tell me about yourself, turn %d.", turn)
		if turn == 5 {
			msg = strings.Repeat("x", 700)
		}
		if turn == 7 {
			s.Run("/clear")
		}
		if _, err := s.Send(context.Background(), msg, nil); err != nil {
			t.Fatal(err)
		}
		rss = append(rss, residentMiB(t))
	}
	t.Logf("RSS by turn (MiB): %.0f", rss)
	if rss[29] > 1.5*rss[2] {
		t.Fatalf("RSS grew from %.0f MiB at turn 3 to %.0f MiB at turn 30", rss[2], rss[29])
	}
}

// A long chat never decodes past the model's window: under the default policy, the reply that reaches the window
// stops there and says so, and the next message is refused in one line naming /clear; under drop-oldest every
// turn fits, the drops recorded. The recording shows it: no turn's context and reply pass the window, and the
// end-of-turn token is recorded as special.
func TestChatNeverDecodesPastTheWindow(t *testing.T) {
	for _, policy := range []string{workbench.ContextStop, workbench.ContextDropOldest} {
		t.Run(policy, func(t *testing.T) {
			s, path := persona(t, 200)
			s.Run("/set context " + policy)
			_, window := s.Context()
			if window != 1024 {
				t.Fatalf("the embedded model's window: %d", window)
			}
			var full, reached bool
			for turn := 0; turn < 40; turn++ {
				_, err := s.Send(context.Background(), fmt.Sprintf("Tell me a long story about the sea, part %d, with every detail you know.", turn), nil)
				var fullErr *workbench.ContextFullError
				var reachedErr *workbench.WindowReachedError
				switch {
				case errors.As(err, &fullErr):
					full = true
					if !strings.Contains(err.Error(), "/clear") {
						t.Fatalf("the refusal names no way on: %v", err)
					}
				case errors.As(err, &reachedErr):
					reached = true
				case err != nil:
					t.Fatal(err)
				}
				if used, _ := s.Context(); used > window {
					t.Fatalf("turn %d: the context reached %d of %d positions", turn, used, window)
				}
				if full {
					break
				}
			}
			if policy == workbench.ContextStop && !(reached || full) {
				t.Fatal("40 long turns never reached the window: the test proves nothing")
			}
			if policy == workbench.ContextDropOldest && full {
				t.Fatal("drop-oldest refused a message that fits the window alone")
			}
			rec, err := sessions.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			ctxLen, drops, specials := 0, 0, 0
			for _, e := range rec.Events {
				switch {
				case e.Type == sessions.TurnStart && e.Role == "assistant":
					ctxLen = len(e.Context)
				case e.Type == sessions.Token && e.ID != 0:
					if ctxLen++; ctxLen > window {
						t.Fatalf("a token recorded at position %d of a %d-position window", ctxLen, window)
					}
					if e.Special {
						specials++
					}
				case e.Type == sessions.Control && e.Name == "dropped_turns":
					drops++
				}
			}
			if policy == workbench.ContextDropOldest && drops == 0 {
				t.Fatal("drop-oldest recorded no drop over 40 long turns")
			}
			if specials == 0 {
				t.Fatal("no end-of-turn token recorded as special")
			}
		})
	}
}

// Every recorded number can be recomputed from the recording: a chat with capping switched on, steering
// switched on and capping moved mid-reply runs again, teacher-forced through the recorded model, axis and
// interventions, to the recorded projections and cap moves.
func TestRecordedSessionVerifies(t *testing.T) {
	s, path := persona(t, 40)
	for turn, msg := range []string{"Who are you?", "Tell me about the sea.", "And the stars?"} {
		n := 0
		_, err := s.Send(context.Background(), msg, func(workbench.Token) {
			n++
			c := s.Controls()
			switch n {
			case 3:
				c.CapOn = true
			case 7:
				c.SteerOn, c.SteerCoeff = true, -2
			case 11:
				c.Cap.P = 0.5
			case 15 + turn:
				c.CapOn = false
			default:
				return
			}
			if err := s.Apply(c); err != nil {
				t.Error(err)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	rec, err := sessions.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	changes := 0
	for _, e := range rec.Events {
		if e.Type == sessions.Token && e.Iv > 0 {
			changes++
		}
	}
	if changes == 0 {
		t.Fatal("no token was made under a list changed mid-reply: the test proves nothing")
	}
	rt := torchtest.Runtime(t)
	lm, err := model.Load(rt, rec.Header.Model, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	axisDir := filepath.Join(rec.Header.Model, "axis")
	axis, _, err := probes.OpenAxisFolderFor(axisDir, lm, false)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := workbench.Verify(context.Background(), lm, axis.Axis.Layers, rec, 1e-4)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d turns, %d tokens (%d under a changed list): max |Δ projection| %.2g, max |Δ cap move| %.2g", rep.Turns, rep.Tokens, changes, rep.MaxProj, rep.MaxCap)
	if !rep.OK() || rep.Tokens < 60 {
		t.Fatalf("%+v", rep)
	}
	// A tampered number is found.
	for i, e := range rec.Events {
		if e.Type == sessions.Token && len(e.Proj) > 0 && e.Iv > 0 {
			rec.Events[i].Proj[0] += 0.5
			break
		}
	}
	if rep, _ := workbench.Verify(context.Background(), lm, axis.Axis.Layers, rec, 1e-4); rep.OK() {
		t.Fatal("a projection moved by 0.5 verified")
	}
}
