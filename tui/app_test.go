package tui

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest"
	"github.com/muesli/termenv"

	"github.com/keel-lab/keel/sessions"
)

// fakeEngine replies with scripted tokens whose projections fall turn by turn, as a drifting model's would.
type fakeEngine struct {
	mu       sync.Mutex
	controls []Controls
	marks    []string
	delay    time.Duration
	replies  int
	axis     string
	jobs     []string // recorded job events, "id state"
}

func (f *fakeEngine) Info() Info {
	return Info{Model: "/models/persona", Device: "cpu", DType: "f32", Layers: 8, DModel: 256, Axis: f.axis, Percentiles: []string{"p1", "p25", "p50", "p75"}}
}

func (f *fakeEngine) Apply(c Controls) error {
	if c.Layer < 0 || c.Layer >= 8 {
		return fmt.Errorf("layer %d: the model has layers 0 to 7", c.Layer)
	}
	if c.CapOn && c.Percentile != "p25" && c.Percentile != "p50" && c.Percentile != "p1" && c.Percentile != "p75" {
		return fmt.Errorf("no percentile %s in the calibration", c.Percentile)
	}
	f.mu.Lock()
	f.controls = append(f.controls, c)
	f.mu.Unlock()
	return nil
}

func (f *fakeEngine) last() Controls {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.controls[len(f.controls)-1]
}

func (f *fakeEngine) Tau(c Controls, layer int) float64 {
	if !c.CapOn || layer < c.Window[0] || layer >= c.Window[1] {
		return math.NaN()
	}
	return 1.5
}

func (f *fakeEngine) Scale(layer int) (float64, float64) { return 0, 3 }

func (f *fakeEngine) Generate(ctx context.Context, msgs []Message, s Sampling, emit func(Token)) (string, error) {
	f.mu.Lock()
	f.replies++
	n := f.replies
	f.mu.Unlock()
	words := strings.Fields(fmt.Sprintf("Certainly. Reply number %d to %q, in the Assistant's words. I hope this helps.", n, msgs[len(msgs)-1].Content))
	var out strings.Builder
	for i, w := range words {
		if f.delay > 0 {
			select {
			case <-ctx.Done():
				return out.String(), ctx.Err()
			case <-time.After(f.delay):
			}
		}
		piece := " " + w
		if i == 0 {
			piece = w
		}
		out.WriteString(piece)
		emit(Token{Text: piece, Proj: 3 - float64(n) - 0.1*float64(i), HasProj: true})
	}
	return out.String(), nil
}

func (f *fakeEngine) Mark(label string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.marks = append(f.marks, label)
	return nil
}

func (f *fakeEngine) Close() error { return nil }

func (f *fakeEngine) RecordJob(u JobUpdate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jobs = append(f.jobs, u.ID+" "+u.State)
	return nil
}

type fakeJobs struct{ started [][]string }

func (j *fakeJobs) Start(kind string, args []string) (string, error) {
	j.started = append(j.started, append([]string{kind}, args...))
	return kind + "-1", nil
}
func (j *fakeJobs) Cancel(id string) error { return nil }
func (j *fakeJobs) ModelDir(ref string) (string, error) {
	return "", fmt.Errorf("no run %q", ref)
}

func testApp(eng *fakeEngine, jobs JobRunner) *App {
	clock := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	return New(Options{Engine: eng, Jobs: jobs, Sampling: Sampling{Temperature: 0.7, TopP: 0.9, MaxTokens: 64}, Controls: DefaultControls(8),
		Styles: NewStyles(termenv.ANSI256), Tint: true, Memory: func() uint64 { return 200 << 20 },
		Now: func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			clock = clock.Add(100 * time.Millisecond)
			return clock
		}})
}

// waitFor reads the program's output until it shows what (escape sequences removed), or fails with the tail.
func waitFor(t *testing.T, tm *teatest.TestModel, what string) {
	t.Helper()
	waitThen(t, tm, what, false)
}

// waitIdle waits for what and for the status line's last word on generation to be "ready".
func waitIdle(t *testing.T, tm *teatest.TestModel, what string) {
	t.Helper()
	waitThen(t, tm, what, true)
}

func waitThen(t *testing.T, tm *teatest.TestModel, what string, idle bool) {
	t.Helper()
	var b bytes.Buffer
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		io.Copy(&b, tm.Output())
		out := ansi.Strip(b.String())
		if strings.Contains(out, what) && (!idle || strings.LastIndex(out, "ready") > strings.LastIndex(out, "generating")) {
			return
		}
	}
	out := ansi.Strip(b.String())
	t.Fatalf("no %q on screen in 5s; the output ends:\n%s", what, out[max(0, len(out)-800):])
}

func finalView(t *testing.T, tm *teatest.TestModel) (*App, string) {
	t.Helper()
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(*App)
	fm.quitting = false // the view as it stood before quitting
	return fm, fm.View()
}

func typeLine(tm *teatest.TestModel, s string) {
	tm.Type(s)
	tm.Send(tea.KeyMsg{Type: tea.KeyEnter})
}

// The main screen after a chat with capping switched on: chat, the plot with the cap line, controls, status.
func TestMainScreenGolden(t *testing.T) {
	eng := &fakeEngine{axis: "/models/persona/axis/axis.safetensors"}
	tm := teatest.NewTestModel(t, testApp(eng, nil), teatest.WithInitialTermSize(120, 36))
	typeLine(tm, "Who are you?")
	waitIdle(t, tm, "helps.")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlK})
	typeLine(tm, "Tell me more.")
	waitIdle(t, tm, "Reply number 2")
	fm, view := finalView(t, tm)
	if !eng.last().CapOn || !strings.Contains(view, "cap p25 layers 3:5") || !strings.Contains(ansi.Strip(view), "■ tau") {
		t.Fatalf("capping did not reach the engine, the status line or the plot:\n%s", view)
	}
	if len(fm.turns) != 4 || fm.turns[3].text == "" {
		t.Fatalf("turns %+v", fm.turns)
	}
	golden.RequireEqual(t, []byte(view))
}

func TestHelpGolden(t *testing.T) {
	tm := teatest.NewTestModel(t, testApp(&fakeEngine{}, nil), teatest.WithInitialTermSize(100, 30))
	tm.Type("?")
	waitFor(t, tm, "capping on/off")
	_, view := finalView(t, tm)
	for _, want := range []string{"new line", "steering on/off", "play/pause", "no axis loaded"} {
		if !strings.Contains(view, want) {
			t.Fatalf("help is missing %q:\n%s", want, view)
		}
	}
	golden.RequireEqual(t, []byte(view))
}

func TestJobsPaneGolden(t *testing.T) {
	jobs := &fakeJobs{}
	eng := &fakeEngine{axis: "axis"}
	tm := teatest.NewTestModel(t, testApp(eng, jobs), teatest.WithInitialTermSize(120, 36))
	typeLine(tm, "/train sft --data chats.jsonl --steps 40")
	waitFor(t, tm, "started job sft-1")
	for step := 1; step <= 30; step++ {
		tm.Send(JobUpdate{ID: "sft-1", Kind: "sft", State: "running", Step: step, Total: 40, Loss: 3 / float64(step), ETA: time.Duration(40-step) * time.Second})
	}
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlO})
	waitFor(t, tm, "30/40")
	_, view := finalView(t, tm)
	if len(jobs.started) != 1 || strings.Join(jobs.started[0], " ") != "sft --data chats.jsonl --steps 40" {
		t.Fatalf("jobs started: %v", jobs.started)
	}
	if !strings.Contains(view, "30/40") || !strings.Contains(view, "ETA 10s") || !strings.Contains(view, "▁") {
		t.Fatalf("jobs pane:\n%s", view)
	}
	golden.RequireEqual(t, []byte(view))
	// The session records the job's changes of state, not every step.
	eng.mu.Lock()
	defer eng.mu.Unlock()
	if strings.Join(eng.jobs, ",") != "sft-1 queued,sft-1 running" {
		t.Fatalf("recorded job events: %v", eng.jobs)
	}
}

// The jobs pane keeps each A-LoL figure's latest value: the validation reward is measured only now and then.
func TestJobsPaneShowsALoLFigures(t *testing.T) {
	jobs := &fakeJobs{}
	tm := teatest.NewTestModel(t, testApp(&fakeEngine{axis: "axis"}, jobs), teatest.WithInitialTermSize(120, 36))
	typeLine(tm, "/train alol --data rollouts.jsonl --reward axis --algorithm a_lol")
	waitFor(t, tm, "started job alol-1")
	tm.Send(JobUpdate{ID: "alol-1", Kind: "alol", State: "running", Step: 10, Total: 20, Loss: 0.8,
		Extra: map[string]float64{"advantage_mean": 0.25, "positive_fraction": 0.5, "importance_weight_mean": 1.02, "clip_fraction": 0, "val_reward": 0.61}})
	tm.Send(JobUpdate{ID: "alol-1", Kind: "alol", State: "running", Step: 11, Total: 20, Loss: 0.7,
		Extra: map[string]float64{"advantage_mean": 0.3, "positive_fraction": 0.5, "importance_weight_mean": 1.04, "clip_fraction": 0.125}})
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlO})
	waitFor(t, tm, "11/20")
	_, view := finalView(t, tm)
	for _, want := range []string{"A 0.300", "A>0 0.500", "rho 1.040", "clipped 0.125", "val R 0.610"} {
		if !strings.Contains(view, want) {
			t.Fatalf("jobs pane lacks %q:\n%s", want, view)
		}
	}
}

func TestReplayGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.jsonl")
	rec, err := sessions.Create(path, sessions.Header{Keel: "test", Model: "persona", Layers: []int{4}, Term: sessions.Term{Cols: 60, Rows: 12}})
	if err != nil {
		t.Fatal(err)
	}
	r := &sessions.Recording{Rec: rec}
	r.Say("user", "Who are you?")
	rec.Add(sessions.Event{Type: sessions.TurnStart, Role: "assistant"})
	for i, w := range []string{"I", " am", " an", " AI", " assistant."} {
		rec.Add(sessions.Event{Type: sessions.Token, ID: i, Piece: w, Proj: []float32{2 - float32(i)/4}})
	}
	rec.Add(sessions.Event{Type: sessions.TurnEnd, Role: "assistant", Text: "I am an AI assistant."})
	rec.Close()
	tm := teatest.NewTestModel(t, testApp(&fakeEngine{}, nil), teatest.WithInitialTermSize(100, 30))
	typeLine(tm, "/replay "+path)
	waitFor(t, tm, "replay paused 10/10") // it pauses at the end
	tm.Type("-")
	waitFor(t, tm, "x0.5")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC}) // leaves the replay; the next one quits
	fm, view := finalView(t, tm)
	if fm.replay != nil {
		t.Fatal("ctrl+c during a replay should leave the replay first")
	}
	_ = view
	// The replay frame itself, before ctrl+c left it: rebuild it from the same file.
	a := testApp(&fakeEngine{}, nil)
	a.Update(tea.WindowSizeMsg{Width: 100, Height: 30})
	a.startReplay(path)
	for a.replay.player.Step() {
	}
	a.replay.player.Pause()
	a.rerenderChat()
	a.refresh()
	view = a.View()
	if !strings.Contains(view, "I am an AI assistant.") || !strings.Contains(view, "replay paused") {
		t.Fatalf("replay view:\n%s", view)
	}
	golden.RequireEqual(t, []byte(view))
}

// Bad input gets an inline message; the app keeps running and the controls stay as they were.
func TestBadCommandsAreInlineMessages(t *testing.T) {
	eng := &fakeEngine{axis: "axis"}
	a := testApp(eng, nil)
	a.Update(tea.WindowSizeMsg{Width: 100, Height: 30})
	before := a.controls
	for cmd, want := range map[string]string{
		"/frobnicate":         "unknown command /frobnicate",
		"/layer 12":           "layer 12: the model has layers 0 to 7",
		"/layer x":            "not a number",
		"/cap p33":            "no percentile p33",
		"/cap 3-5":            "/cap: on, off",
		"/steer lots":         "give a strength",
		"/set temperature -1": "non-negative",
		"/set top-p 2":        "(0, 1]",
		"/set color red":      "temperature, top-p",
		"/train sft":          "training is not available",
		"/load sft-9":         "loading is not available",
	} {
		a.runCommand(cmd)
		a.refresh()
		if !strings.Contains(a.notice, want) || !strings.Contains(a.View(), want) {
			t.Errorf("%s: notice %q, want %q on screen", cmd, a.notice, want)
		}
	}
	if a.controls != before || eng.last() != before {
		t.Fatalf("bad commands changed the controls: %+v, engine %+v", a.controls, eng.last())
	}
	// A model that fails to load leaves the error on screen and the old model in place.
	a.opt.Load = func(dir, axis string) (Engine, error) { return nil, fmt.Errorf("%s: no config.json", dir) }
	cmd := a.runCommand("/model /nowhere")
	a.Update(cmd())
	if !strings.Contains(a.View(), "could not load /nowhere: /nowhere: no config.json") || a.opt.Engine != Engine(eng) {
		t.Fatalf("failed load: notice %q", a.notice)
	}
	a.runCommand("/mark interesting")
	if len(eng.marks) != 1 || eng.marks[0] != "interesting" {
		t.Fatalf("marks %v", eng.marks)
	}
}

// ctrl+c stops a streaming reply without leaving; the keys typed while it streams are kept; a second ctrl+c
// with nothing streaming quits.
func TestInterruptStopsGenerationThenQuits(t *testing.T) {
	eng := &fakeEngine{axis: "axis", delay: 30 * time.Millisecond}
	tm := teatest.NewTestModel(t, testApp(eng, nil), teatest.WithInitialTermSize(100, 30))
	typeLine(tm, "Talk for a while.")
	waitFor(t, tm, "Reply")
	tm.Type("next question")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	waitFor(t, tm, "stopped")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(*App)
	if fm.generating || !fm.quitting {
		t.Fatalf("generating %v, quitting %v", fm.generating, fm.quitting)
	}
	if got := fm.input.Value(); got != "next question" {
		t.Fatalf("the input typed while streaming is %q", got)
	}
	if strings.Contains(fm.turns[len(fm.turns)-1].text, "helps.") {
		t.Fatal("the reply ran to its end despite ctrl+c")
	}
}

func TestResizeReflowsAndNoColourIsPlain(t *testing.T) {
	eng := &fakeEngine{axis: "axis"}
	a := New(Options{Engine: eng, Sampling: Sampling{Temperature: 0.7, TopP: 0.9, MaxTokens: 64}, Controls: DefaultControls(8),
		Styles: NewStyles(ProfileFromEnv(func(k string) string { return map[string]string{"TERM": "dumb"}[k] })), Tint: true,
		Memory: func() uint64 { return 0 }})
	a.send("hello")
	for msg := range a.stream {
		a.Update(msg)
		if _, ok := msg.(doneMsg); ok {
			break
		}
	}
	for _, size := range [][2]int{{200, 60}, {100, 30}, {60, 20}, {30, 10}} {
		a.Update(tea.WindowSizeMsg{Width: size[0], Height: size[1]})
		view := a.View()
		if i := strings.Index(view, "\x1b["); i >= 0 {
			t.Fatalf("%dx%d: escape sequences with TERM=dumb: %q", size[0], size[1], view[max(0, i-60):min(len(view), i+30)])
		}
		lines := strings.Split(view, "\n")
		if len(lines) > size[1] {
			t.Errorf("%dx%d: %d lines", size[0], size[1], len(lines))
		}
		for _, l := range lines {
			if w := len([]rune(l)); w > size[0] {
				t.Errorf("%dx%d: a line of %d cells: %q", size[0], size[1], w, l)
				break
			}
		}
	}
}

func TestControlsStartAtTheBestCap(t *testing.T) {
	c := DefaultControls(8)
	if got := c.WithCap("layers_2:6-p0.25", 8); got.Window != [2]int{2, 6} || got.Percentile != "p25" {
		t.Fatalf("%+v", got)
	}
	for _, bad := range []string{"", "layers_6:12-p0.25", "nonsense"} {
		if got := c.WithCap(bad, 8); got != c {
			t.Fatalf("%q changed the controls: %+v", bad, got)
		}
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	raw, _ := json.Marshal(map[string]any{"temperature": 0.2, "mouse": true, "keys": map[string][]string{"toggle_cap": {"f5"}}})
	os.WriteFile(path, raw, 0o644)
	cfg := DefaultConfig()
	if err := ReadConfig(path, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Sampling.Temperature != 0.2 || !cfg.Mouse || cfg.Keys.ToggleCap.Keys()[0] != "f5" {
		t.Fatalf("config %+v", cfg)
	}
	for body, want := range map[string]string{`{"keys": {"fly": ["x"]}}`: "fly", `{"top_p": 3}`: "top_p", `{`: "fix the JSON"} {
		os.WriteFile(path, []byte(body), 0o644)
		cfg := DefaultConfig()
		if err := ReadConfig(path, &cfg); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v", body, err)
		}
	}
}

// View of the main screen at 200x60 with a 2,000-token history.
func BenchmarkViewLongHistory(b *testing.B) {
	a := testApp(&fakeEngine{axis: "axis"}, nil)
	a.Update(tea.WindowSizeMsg{Width: 200, Height: 60})
	for i := 0; i < 100; i++ {
		a.turns = append(a.turns, turn{role: "user", text: "question"}, turn{role: "assistant"})
		for k := 0; k < 20; k++ {
			a.turns[len(a.turns)-1].tokens = append(a.turns[len(a.turns)-1].tokens, Token{Text: " word", Proj: float64(k) / 10, HasProj: true})
			a.turns[len(a.turns)-1].text += " word"
		}
	}
	a.rerenderChat()
	a.refresh()
	b.Run("View", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			_ = a.View()
		}
	})
	b.Run("TokenUpdateAndView", func(b *testing.B) {
		a.generating = true
		for i := 0; i < b.N; i++ {
			a.Update(tokenMsg{a.gen, Token{Text: " more", Proj: 1, HasProj: true}})
			_ = a.View()
		}
	})
}
