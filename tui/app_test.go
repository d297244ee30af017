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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest"
	"github.com/mattn/go-runewidth"
	"github.com/muesli/termenv"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/train"
	"github.com/keel-lab/keel/workbench"
	"github.com/keel-lab/keel/workbench/workbenchtest"
)

type fakeEngine = workbenchtest.Backend

func testApp(eng *fakeEngine, jobs workbench.JobRunner) *App {
	return testAppWith(eng, jobs, NewStyles(termenv.ANSI256))
}

func testAppWith(eng *fakeEngine, jobs workbench.JobRunner, st Styles) *App {
	clock := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	s := workbench.New(eng, workbench.Options{Sampling: workbench.Sampling{Temperature: 0.7, TopP: 0.9, MaxTokens: 64},
		Controls: workbench.DefaultControls(8), Jobs: jobs})
	return New(Options{Session: s, Jobs: jobs, Styles: st, Tint: true, Memory: func() uint64 { return 200 << 20 },
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
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlD})
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
	eng := &fakeEngine{Axis: "/models/persona/axis/axis.safetensors"}
	tm := teatest.NewTestModel(t, testApp(eng, nil), teatest.WithInitialTermSize(120, 36))
	typeLine(tm, "Who are you?")
	waitIdle(t, tm, "helps.")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlK})
	typeLine(tm, "Tell me more.")
	waitIdle(t, tm, "Reply number 2")
	fm, view := finalView(t, tm)
	if !eng.Last().CapOn || !strings.Contains(view, "cap p25 layers 3:5") || !strings.Contains(ansi.Strip(view), "■ tau") {
		t.Fatalf("capping did not reach the engine, the status line or the plot:\n%s", view)
	}
	if turns := fm.session.Turns(); len(turns) != 4 || turns[3].Text == "" {
		t.Fatalf("turns %+v", turns)
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
	jobs := &workbenchtest.Jobs{}
	eng := &fakeEngine{Axis: "axis"}
	tm := teatest.NewTestModel(t, testApp(eng, jobs), teatest.WithInitialTermSize(120, 36))
	typeLine(tm, "/train sft --data chats.jsonl --steps 40")
	waitFor(t, tm, "started job sft-1")
	tm.Send(workbench.JobUpdate{ID: "sft-1", Kind: "sft", State: "queued"})
	for step := 1; step <= 30; step++ {
		tm.Send(workbench.JobUpdate{ID: "sft-1", Kind: "sft", State: "running", Step: step, Total: 40, Loss: 3 / float64(step), ETA: time.Duration(40-step) * time.Second})
	}
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlO})
	waitFor(t, tm, "30/40")
	_, view := finalView(t, tm)
	if len(jobs.Started) != 1 || strings.Join(jobs.Started[0], " ") != "sft --data chats.jsonl --steps 40" {
		t.Fatalf("jobs started: %v", jobs.Started)
	}
	if !strings.Contains(view, "30/40") || !strings.Contains(view, "ETA 10s") || !strings.Contains(view, "▁") {
		t.Fatalf("jobs pane:\n%s", view)
	}
	golden.RequireEqual(t, []byte(view))
	// The session records the job's changes of state, not every step.
	if got := strings.Join(eng.EventsOf("job "), ","); got != "job sft-1 queued,job sft-1 running" {
		t.Fatalf("recorded job events: %v", got)
	}
}

// The jobs pane keeps each A-LoL figure's latest value: the validation reward is measured only now and then.
func TestJobsPaneShowsALoLFigures(t *testing.T) {
	jobs := &workbenchtest.Jobs{}
	tm := teatest.NewTestModel(t, testApp(&fakeEngine{Axis: "axis"}, jobs), teatest.WithInitialTermSize(120, 36))
	typeLine(tm, "/train alol --data rollouts.jsonl --reward axis --algorithm a_lol")
	waitFor(t, tm, "started job alol-1")
	tm.Send(workbench.JobUpdate{ID: "alol-1", Kind: "alol", State: "running", Step: 10, Total: 20, Loss: 0.8,
		Extra: map[string]float64{"advantage_mean": 0.25, "positive_fraction": 0.5, "importance_weight_mean": 1.02, "clip_fraction": 0, "val_reward": 0.61}})
	tm.Send(workbench.JobUpdate{ID: "alol-1", Kind: "alol", State: "running", Step: 11, Total: 20, Loss: 0.7,
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

// A live chat recorded to a file and the frames replayed from that file: the chat with its tint, the plot and the
// controls are the same screen for screen, token by token; /replay plays them.
func TestReplayDrawsTheLiveFrames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.jsonl")
	rec, err := sessions.Create(path, sessions.Header{Keel: "test", Model: "/models/persona", Axis: "/models/persona/axis/axis.safetensors",
		Layers: []int{0, 1, 2, 3, 4, 5, 6, 7}, NLayers: 8, Term: sessions.Term{Cols: 120, Rows: 36},
		Sampling: model.Sampling{Temperature: 0.7, TopP: 0.9}})
	if err != nil {
		t.Fatal(err)
	}
	eng := &fakeEngine{Axis: "/models/persona/axis/axis.safetensors", Rec: rec}
	a := testApp(eng, nil)
	a.Update(tea.WindowSizeMsg{Width: 120, Height: 36})
	body := func(screen string) string { // the frame without the status line and the input area below the panes
		lines := strings.Split(screen, "\n")
		return strings.Join(lines[1:len(lines)-5], "\n")
	}
	var live []string
	chat := func(text string) {
		a.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(text)})
		_, cmd := a.Update(tea.KeyMsg{Type: tea.KeyEnter})
		for msg := cmd(); ; msg = <-a.stream {
			a.Update(msg)
			if _, ok := msg.(doneMsg); ok {
				break
			}
		}
		live = append(live, body(a.View())) // the screen once the reply is in (while it streams, frames coalesce)
	}
	command := func(line string) {
		a.runCommand(line)
		a.refresh()
		live = append(live, body(a.View()))
	}
	chat("Who are you?")
	command("/cap 3:6")
	command("/layer 5")
	command("/tint")
	chat("Tell me more.")
	command("/tint")
	command("/set temperature 0.3")
	chat("And then?")
	rec.Close()

	s, err := sessions.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	frames, err := Frames(s, NewStyles(termenv.ANSI256), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var streamed []string
	for _, f := range frames {
		streamed = append(streamed, body(f.Screen))
	}
	// Every live frame appears among the replayed ones, in order.
	k := 0
	for _, f := range streamed {
		if k < len(live) && f == live[k] {
			k++
		}
	}
	if k != len(live) {
		t.Fatalf("live frame %d of %d is not among the replayed frames in order:\nlive:\n%s\nreplayed candidates near it:\n%s", k+1, len(live), live[k], nearest(streamed, live[k]))
	}
	last := frames[len(frames)-1].Screen
	for _, want := range []string{"Reply number 3", "■ tau", "layer 5", "T 0.3"} {
		if !strings.Contains(ansi.Strip(last), want) {
			t.Fatalf("the last replayed frame lacks %q:\n%s", want, last)
		}
	}
	golden.RequireEqual(t, []byte(last))

	// /replay plays those frames in the app.
	b := testApp(&fakeEngine{}, nil)
	b.Update(tea.WindowSizeMsg{Width: 120, Height: 36})
	b.Update(b.runCommand("/replay " + path)()) // the frames are drawn off the UI goroutine
	if b.replay == nil || len(b.replay.frames) != len(frames) {
		t.Fatalf("/replay: %q", b.notice)
	}
	b.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{' '}}) // pause
	for range frames {
		b.Update(tea.KeyMsg{Type: tea.KeyRight})
	}
	if got := b.View(); body(got) != body(last) || !strings.Contains(got, fmt.Sprintf("replay paused %d/%d", len(frames), len(frames))) {
		t.Fatalf("the replay's last frame:\n%s", got)
	}
}

// nearest is the replayed frame that differs from want in the fewest lines, for the failure message.
func nearest(frames []string, want string) string {
	best, bestDiff := "", -1
	wl := strings.Split(want, "\n")
	for _, f := range frames {
		fl := strings.Split(f, "\n")
		d := 0
		for i := range wl {
			if i >= len(fl) || fl[i] != wl[i] {
				d++
			}
		}
		if bestDiff < 0 || d < bestDiff {
			best, bestDiff = f, d
		}
	}
	return best
}

// Bad input gets an inline message; the app keeps running and the controls stay as they were.
func TestBadCommandsAreInlineMessages(t *testing.T) {
	eng := &fakeEngine{Axis: "axis", Recording: "/tmp/s.jsonl"}
	a := testApp(eng, nil)
	a.Update(tea.WindowSizeMsg{Width: 100, Height: 30})
	before := a.session.Controls()
	for cmd, want := range map[string]string{
		"/frobnicate":         "unknown command /frobnicate",
		"/layer 12":           "layer 12: the model has layers 0 to 7",
		"/layer x":            "not a number",
		"/cap p33":            "no percentile p33",
		"/cap 3-5":            "/cap: on, off",
		"/cap 2:99":           "not a window",
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
	if a.session.Controls() != before || eng.Last() != before {
		t.Fatalf("bad commands changed the controls: %+v, engine %+v", a.session.Controls(), eng.Last())
	}
	a.runCommand("/mark interesting")
	if ev := eng.EventsOf("mark "); len(ev) != 1 || ev[0] != "mark interesting" || !strings.Contains(a.notice, `marked turn 0 "interesting"`) {
		t.Fatalf("events %v, notice %q", ev, a.notice)
	}
}

// A model that fails to load leaves the error on screen and the old model in place.
func TestFailedLoadKeepsTheModel(t *testing.T) {
	eng := &fakeEngine{Axis: "axis"}
	s := workbench.New(eng, workbench.Options{Sampling: workbench.DefaultSampling(), Controls: workbench.DefaultControls(8),
		Load: func(dir, axis string, _ workbench.Sampling) (workbench.Backend, error) {
			return nil, fmt.Errorf("%s: no config.json", dir)
		}})
	a := New(Options{Session: s, Memory: func() uint64 { return 0 }})
	cmd := a.runCommand("/model /nowhere")
	a.Update(cmd())
	if !strings.Contains(a.View(), "could not load /nowhere: /nowhere: no config.json") || s.Info().Axis != "axis" {
		t.Fatalf("failed load: notice %q", a.notice)
	}
}

// /help is a list, one command per line, that fits a normal terminal's width; esc closes it.
func TestHelpIsAList(t *testing.T) {
	a := testApp(&fakeEngine{}, nil)
	a.Update(tea.WindowSizeMsg{Width: 100, Height: 40})
	a.runCommand("/help")
	a.refresh()
	view := ansi.Strip(a.View())
	for _, c := range workbench.Commands() {
		if !strings.Contains(view, c.Name) {
			t.Errorf("/help lacks %s:\n%s", c.Name, view)
		}
	}
	for _, l := range strings.Split(workbench.HelpText(), "\n") {
		if len([]rune(l)) > 100 {
			t.Errorf("a help line of %d columns: %q", len([]rune(l)), l)
		}
	}
	// In a narrow wide-layout chat pane (120 columns, the plot beside it) every word of every line is shown: long
	// lines wrap under their description, nothing is cut at the pane's edge.
	a.Update(tea.WindowSizeMsg{Width: 120, Height: 60})
	a.runCommand("/help")
	a.refresh()
	narrow := strings.Join(strings.Fields(ansi.Strip(a.chat.View())), " ")
	for _, w := range strings.Fields(workbench.HelpText()) {
		if !strings.Contains(narrow, w) {
			t.Fatalf("/help at 120 columns lacks %q:\n%s", w, ansi.Strip(a.chat.View()))
		}
	}
	a.Update(tea.KeyMsg{Type: tea.KeyEsc})
	if strings.Contains(ansi.Strip(a.View()), "/replay FILE") {
		t.Fatal("esc left the command list on screen")
	}
}

// ctrl+c stops a streaming reply without leaving; the keys typed while it streams are kept; with nothing
// streaming, ctrl+c first drops a typed draft, as a shell does, then asks for a second press, then quits.
func TestInterruptStopsGenerationThenQuits(t *testing.T) {
	eng := &fakeEngine{Axis: "axis", Delay: 30 * time.Millisecond}
	tm := teatest.NewTestModel(t, testApp(eng, nil), teatest.WithInitialTermSize(100, 30))
	typeLine(tm, "Talk for a while.")
	waitFor(t, tm, "Reply")
	tm.Type("next question")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	waitFor(t, tm, "stopped")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	waitFor(t, tm, "draft cleared")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	waitFor(t, tm, "ctrl+c again (or ctrl+d) quits")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(*App)
	if fm.generating || !fm.quitting {
		t.Fatalf("generating %v, quitting %v", fm.generating, fm.quitting)
	}
	turns := fm.session.Turns()
	if last := turns[len(turns)-1]; strings.Contains(last.Text, "helps.") || !last.Stopped {
		t.Fatalf("the reply ran to its end despite ctrl+c, or is not marked stopped: %+v", last)
	}
	if ev := eng.Events(); ev[len(ev)-1] != "control stopped true" {
		t.Fatalf("the stop is not recorded: %v", ev)
	}
}

func TestResizeReflowsAndNoColourIsPlain(t *testing.T) {
	a := testAppWith(&fakeEngine{Axis: "axis"}, nil, NewStyles(ProfileFromEnv(func(k string) string { return map[string]string{"TERM": "dumb"}[k] })))
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

// View of the main screen at 200x60 with a 1,500-token history.
func BenchmarkViewLongHistory(b *testing.B) {
	a := testApp(&fakeEngine{Axis: "axis"}, nil)
	a.Update(tea.WindowSizeMsg{Width: 200, Height: 60})
	for i := 0; i < 100; i++ {
		a.session.Send(context.Background(), "question", nil)
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
			a.Update(tokenMsg{a.gen, workbench.Token{Text: " more", Proj: 1, HasProj: true}})
			_ = a.View()
		}
	})
}

// The TUI and the line REPL answer every command of the one table, and refuse the same bad ones with the same line.
func TestTUIAndREPLAnswerAlike(t *testing.T) {
	lines := []string{"/frobnicate", "/layer 12", "/layer x", "/cap p33", "/cap 3-5", "/cap 9:2", "/steer lots", "/steer 1 2 3",
		"/set temperature -1", "/set top-p 2", "/set color red", "/set seed", "/train sft", "/cancel", "/load sft-9", "/model",
		"/mark good", "/save", "/replay", "/cap p50", "/steer -1 4", "/layer 2", "/system Be brief.", "/set seed 3", "/clear"}
	for _, c := range workbench.Commands() {
		lines = append(lines, c.Name)
	}
	for _, line := range lines {
		if strings.HasPrefix(line, "/quit") || strings.HasPrefix(line, "/exit") {
			continue
		}
		a := testApp(&fakeEngine{Axis: "axis"}, nil)
		a.Update(tea.WindowSizeMsg{Width: 160, Height: 40})
		a.runCommand(line)
		var out strings.Builder
		r := &workbench.REPL{Session: workbench.New(&fakeEngine{Axis: "axis"}, workbench.Options{Sampling: workbench.DefaultSampling(),
			Controls: workbench.DefaultControls(8)}), In: strings.NewReader(line + "\n"), Out: &out}
		if err := r.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		repl := strings.TrimSpace(out.String())
		if strings.Contains(a.notice, "unknown command") != strings.Contains(repl, "unknown command") {
			t.Errorf("%s: TUI %q, REPL %q", line, a.notice, repl)
		}
		if strings.Contains(a.notice, "unknown command") && line != "/frobnicate" {
			t.Errorf("%s is in the table but the TUI does not know it", line)
		}
		switch workbench.New(&fakeEngine{Axis: "axis"}, workbench.Options{Sampling: workbench.DefaultSampling(), Controls: workbench.DefaultControls(8)}).Run(line).Action {
		case workbench.NoAction:
			if a.notice != repl {
				t.Errorf("%s: the TUI says %q, the REPL %q", line, a.notice, repl)
			}
		}
	}
}

// The jobs pane lists a run that another process started, with its progress, from the runs folder.
func TestJobsPaneShowsRunsOfOtherProcesses(t *testing.T) {
	dir := t.TempDir()
	run, err := train.NewRun(dir, "alol")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := run.ReadState()
	st.State, st.PID, st.Phase = train.Running, os.Getpid(), "scoring 120 training responses with axis"
	if err := run.WriteState(st); err != nil {
		t.Fatal(err)
	}
	var tm atomic.Pointer[teatest.TestModel]
	jobs := &workbench.ProcessJobs{RunsDir: dir, Send: func(u workbench.JobUpdate) {
		for tm.Load() == nil {
			time.Sleep(time.Millisecond)
		}
		tm.Load().Send(u)
	}}
	tm.Store(teatest.NewTestModel(t, testApp(&fakeEngine{Axis: "axis"}, jobs), teatest.WithInitialTermSize(120, 36)))
	tm.Load().Send(tea.KeyMsg{Type: tea.KeyCtrlO})
	waitFor(t, tm.Load(), "scoring 120 training responses")
	// The run begins its steps: the pane follows its metrics.
	st.Step, st.TotalSteps, st.Loss, st.Phase = 3, 10, 0.5, "training"
	f, _ := os.OpenFile(filepath.Join(run.Dir, "metrics.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	for step := 1; step <= 3; step++ {
		json.NewEncoder(f).Encode(train.Metrics{Step: step, Loss: 1 / float64(step), Extra: map[string]float64{"reward_mean": 0.1 * float64(step)}})
	}
	f.Close()
	run.WriteState(st)
	waitFor(t, tm.Load(), run.ID+" running 3/10")
	_, view := finalView(t, tm.Load())
	if !strings.Contains(view, "R    ") {
		t.Fatalf("the reward is not plotted:\n%s", view)
	}
}

// A grapheme cluster split over tokens (a ZWJ family, a flag, a skin tone) is tinted whole, and drawn as every
// terminal draws it alike (the fusing joiner and modifier dropped, a flag kept): the tinted reply measures what
// the terminal draws, so the panes beside it stay where they are.
func TestTintKeepsGraphemeClustersWhole(t *testing.T) {
	st := NewStyles(termenv.ANSI256)
	toks := []workbench.Token{{Text: "Hi 👨", Proj: 3, HasProj: true}, {Text: "\u200d👩", Proj: -1, HasProj: true}, {Text: "\u200d👧 and ", Proj: 1, HasProj: true},
		{Text: "🇫", Proj: 3, HasProj: true}, {Text: "🇷", Proj: -2, HasProj: true}, {Text: " 👋", Proj: 0, HasProj: true}, {Text: "🏽!", Proj: 2, HasProj: true}}
	got := st.TintAll(toks, 0, 3)
	plain := ansi.Strip(got)
	if plain != "Hi 👨👩👧 and 🇫🇷 👋!" {
		t.Fatalf("text %q", plain)
	}
	if w, want := lipgloss.Width(got), ansi.StringWidth(plain); w != want {
		t.Fatalf("the tinted reply measures %d cells, the terminal draws %d", w, want)
	}
	if got == plain {
		t.Fatal("nothing was tinted")
	}
}

// Drift over a long chat shows: the replies plot gives every reply's mean from the first, with the latest named,
// where the token plot holds only the latest tokens; ctrl+← pans the token window back.
func TestConversationViewShowsTheWholeDrift(t *testing.T) {
	a := testApp(&fakeEngine{Axis: "axis"}, nil)
	a.Update(tea.WindowSizeMsg{Width: 120, Height: 40})
	for i := 0; i < 13; i++ {
		a.session.Send(context.Background(), fmt.Sprintf("turn %d", i), nil)
	}
	top := func() float64 { // the plot's highest axis label
		for _, l := range strings.Split(ansi.Strip(a.plotPane), "\n") {
			if f := strings.Fields(l); len(f) > 1 && (strings.HasPrefix(f[1], "┤") || strings.HasPrefix(f[1], "┼")) {
				v, err := strconv.ParseFloat(f[0], 64)
				if err == nil {
					return v
				}
			}
		}
		t.Fatalf("no axis label in\n%s", a.plotPane)
		return 0
	}
	a.refresh()
	if top() > 0.5 { // the drift line at 0 bounds it from above
		t.Fatalf("the token plot reaches %.1f: it should hold only the last replies (means near -10)", top())
	}
	a.Update(tea.KeyMsg{Type: tea.KeyCtrlLeft})
	a.refresh()
	if !strings.Contains(a.plotPane, "tokens ") || !strings.Contains(a.plotPane, " of 195") {
		t.Fatalf("the panned token plot does not say which tokens it shows:\n%s", a.plotPane)
	}
	a.Update(tea.KeyMsg{Type: tea.KeyF3})
	a.refresh()
	plot := ansi.Strip(a.plotPane)
	if top() < 1 || !strings.Contains(plot, "replies 1-13; now: reply 13, mean -10.70") || !strings.Contains(plot, "drift line +0.00") {
		t.Fatalf("the replies plot:\n%s", plot)
	}
}

// Where tau and the drift line fall on one row, tau is drawn there and both values are named.
func TestTauAndDriftLineStayDistinguishable(t *testing.T) {
	a := testApp(&fakeEngine{Axis: "axis", DriftLine: 1.5}, nil)
	a.Update(tea.WindowSizeMsg{Width: 120, Height: 40})
	a.session.Send(context.Background(), "hello", nil)
	a.runCommand("/cap on")
	a.refresh()
	plot := a.plotPane
	if !strings.Contains(ansi.Strip(plot), "drift line +1.50 · tau +1.50") {
		t.Fatalf("the plot does not name both lines:\n%s", plot)
	}
	labelled := false
	for _, l := range strings.Split(plot, "\n") {
		if !strings.HasSuffix(ansi.Strip(l), "┼────── drift, tau") && !strings.HasSuffix(ansi.Strip(l), "─ drift, tau") {
			continue
		}
		labelled = true
		if !strings.Contains(l, "\x1b[91m") {
			t.Fatalf("the shared row is not drawn in tau's colour: %q", l)
		}
	}
	if !labelled {
		t.Fatalf("the shared row does not name both lines at its end:\n%s", ansi.Strip(plot))
	}
}

// On a CUDA device the status line shows the GPU memory the model holds and the allocator has reserved.
func TestStatusLineShowsGPUMemory(t *testing.T) {
	a := testApp(&fakeEngine{Axis: "axis", GPU: [2]int64{3 << 29, 2 << 30}}, nil)
	a.Update(tea.WindowSizeMsg{Width: 160, Height: 40})
	if !strings.Contains(ansi.Strip(a.statusLine), "GPU 1.5/2.0 GiB") {
		t.Fatalf("status line: %s", ansi.Strip(a.statusLine))
	}
	b := testApp(&fakeEngine{Axis: "axis"}, nil)
	b.Update(tea.WindowSizeMsg{Width: 160, Height: 40})
	if strings.Contains(b.statusLine, "GPU") {
		t.Fatalf("a CPU session shows GPU memory: %s", b.statusLine)
	}
}

// ctrl+l redraws, as terminal users expect, and forgets nothing (/clear does that); ctrl+d on an empty input
// quits at once.
func TestCtrlLRedrawsAndCtrlDQuits(t *testing.T) {
	a := testApp(&fakeEngine{Axis: "axis"}, nil)
	a.send("hello")
	for msg := range a.stream {
		a.Update(msg)
		if _, ok := msg.(doneMsg); ok {
			break
		}
	}
	_, cmd := a.Update(tea.KeyMsg{Type: tea.KeyCtrlL})
	if cmd == nil || len(a.session.Turns()) != 2 {
		t.Fatalf("ctrl+l: a redraw %v, turns %d", cmd != nil, len(a.session.Turns()))
	}
	if cmd() != tea.ClearScreen() {
		t.Fatal("ctrl+l does not clear the screen to redraw it")
	}
	a.Update(tea.KeyMsg{Type: tea.KeyCtrlD})
	if !a.quitting {
		t.Fatal("ctrl+d on an empty input does not quit")
	}
}

// A cast of a long session stays small: 64 turns of 100 tokens each, streamed at 100 tokens a second, export
// as changed rows at 10 frames a second, under 5 MB (whole screens at every token were 40 MB).
func TestCastOfALongSessionIsSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "long.jsonl")
	rec, err := sessions.Create(path, sessions.Header{Keel: "test", Model: "/models/persona", Axis: "/models/persona/axis/axis.safetensors",
		Layers: []int{0, 1, 2, 3, 4, 5, 6, 7}, NLayers: 8, Term: sessions.Term{Cols: 160, Rows: 48}, Sampling: model.Sampling{Temperature: 0.7, TopP: 0.9}})
	if err != nil {
		t.Fatal(err)
	}
	at := 1.0
	add := func(e sessions.Event) {
		at += 0.01
		e.T = at
		if err := rec.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	for turn := 0; turn < 64; turn++ {
		msg := fmt.Sprintf("Tell me about the sea, part %d.", turn)
		add(sessions.Event{Type: sessions.TurnStart, Role: "user"})
		add(sessions.Event{Type: sessions.Token, Piece: msg})
		add(sessions.Event{Type: sessions.TurnEnd, Role: "user", Text: msg})
		add(sessions.Event{Type: sessions.TurnStart, Role: "assistant", Context: []int{1, 2, 3}})
		var text strings.Builder
		for k := 0; k < 100; k++ {
			piece := fmt.Sprintf(" word%d", k)
			text.WriteString(piece)
			proj := make([]float32, 8)
			for l := range proj {
				proj[l] = float32(math.Sin(float64(turn*100+k)/7) + float64(l)/4)
			}
			add(sessions.Event{Type: sessions.Token, ID: 10 + k, Piece: piece, Proj: proj})
		}
		add(sessions.Event{Type: sessions.TurnEnd, Role: "assistant", Text: text.String()})
		at += 2 // the user reads and types
	}
	rec.Close()
	s, err := sessions.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	frames, err := FramesEvery(s, NewStyles(termenv.ANSI256), 0, 0, 1.0/10)
	if err != nil {
		t.Fatal(err)
	}
	var cast bytes.Buffer
	if err := s.WriteCast(&cast, frames); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d frames, %.1f MB, drawn and written in %s", len(frames), float64(cast.Len())/(1<<20), time.Since(start).Round(time.Millisecond))
	if cast.Len() > 5<<20 {
		t.Fatalf("a 64-turn cast is %.1f MB", float64(cast.Len())/(1<<20))
	}
	if last := ansi.Strip(frames[len(frames)-1].Screen); !strings.Contains(last, "word99") {
		t.Fatal("the last frame is not the session's end")
	}
}

// Emoji that fuse into one cluster (a ZWJ family, a skin tone, a flag, a variation selector) take the columns
// the layout gives them in any terminal: every chat row measures the same by grapheme clusters (the layout) and
// by code points (wcwidth, as tmux draws), so the plot beside the chat stays in its column.
func TestFusedEmojiKeepTheColumns(t *testing.T) {
	a := testApp(&fakeEngine{Axis: "axis"}, nil)
	a.Update(tea.WindowSizeMsg{Width: 120, Height: 30})
	a.send("family 👨‍👩‍👧 thumbs 👍🏽 flag 🇫🇷 smile ☺️ end")
	for msg := range a.stream {
		a.Update(msg)
		if _, ok := msg.(doneMsg); ok {
			break
		}
	}
	for _, row := range strings.Split(ansi.Strip(a.View()), "\n") {
		perRune := 0
		for _, r := range row {
			perRune += runewidth.RuneWidth(r)
		}
		if w := ansi.StringWidth(row); w != perRune {
			t.Fatalf("a row the layout measures %d columns wide, a terminal %d: %q", w, perRune, row)
		}
	}
}

// Without colour the plot's lines are told apart by name: each is named at its right end, and no legend of
// identical marks is drawn.
func TestPlainPlotNamesEveryLine(t *testing.T) {
	a := testAppWith(&fakeEngine{Axis: "axis", DriftLine: -5}, nil, NewStyles(termenv.Ascii))
	a.Update(tea.WindowSizeMsg{Width: 120, Height: 40})
	a.session.Send(context.Background(), "hello", nil)
	a.session.Send(context.Background(), "again", nil)
	a.runCommand("/cap on")
	a.refresh()
	plot := a.plotPane
	if strings.Contains(plot, "■") {
		t.Fatalf("a legend of identical marks without colour:\n%s", plot)
	}
	for _, name := range []string{"token", "turn", "drift", "tau"} {
		if !regexp.MustCompile(`[─╮╯╰╭│┼┤] .*\b` + name + `\b`).MatchString(plot) {
			t.Fatalf("no line named %q:\n%s", name, plot)
		}
	}
}
