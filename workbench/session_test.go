package workbench_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keel-lab/keel/workbench"
	"github.com/keel-lab/keel/workbench/workbenchtest"
)

func newSession(b *workbenchtest.Backend) *workbench.Session {
	return workbench.New(b, workbench.Options{Sampling: workbench.DefaultSampling(), Controls: workbench.DefaultControls(8)})
}

// Every command that changes the chat says what it did and puts it in the recording.
func TestCommandsConfirmAndRecord(t *testing.T) {
	b := &workbenchtest.Backend{Axis: "axis", Recording: "s.jsonl"}
	s := newSession(b)
	transcript := filepath.Join(t.TempDir(), "chat.txt")
	for _, c := range [][2]string{
		{"/system Be brief.", "system prompt set"},
		{"/set temperature 0.2", "temperature = 0.2"},
		{"/set top-p 0.5", "top-p = 0.5"},
		{"/set max-tokens 16", "max-tokens = 16"},
		{"/set seed 7", "seed = 7"},
		{"/set top-k 40", "top-k = 40"},
		{"/set min-p 0.05", "min-p = 0.05"},
		{"/set repetition-penalty 1.1", "repetition-penalty = 1.1"},
		{"/set top-k 2.5", "/set top-k 2.5: give a whole number (0: off)"},
		{"/set context drop-oldest", "context = drop-oldest"},
		{"/cap p50", "capping at p50 on layers 3:5"},
		{"/cap 2:6", "capping at p50 on layers 2:6"},
		{"/cap off", "capping off"},
		{"/steer -2 5", "steering c -2.00 at layer 5"},
		{"/steer off", "steering off"},
		{"/layer 6", "plotting layer 6"},
		{"/set positions generated", "positions = generated"},
		{"/set positions some", "/set positions all|generated: the cap and the steer act at every position, or only where reply tokens are chosen"},
		{"/mark good", `marked turn 1 "good" in s.jsonl`},
		{"/save " + transcript, "saved 1 turns to " + transcript},
		{"/clear", "chat cleared"},
		{"/system", "system prompt removed"},
		{"/exit", ""},
		{"/replay x.jsonl", ""},
		{"/frobnicate", "unknown command /frobnicate: /help lists them"},
		{"/train sft --data x", "training is not available in this session"},
		{"/model /somewhere/else", "loading is not available in this session"},
	} {
		line, want := c[0], c[1]
		if got := s.Run(line).Notice; got != want {
			t.Errorf("%s: %q, want %q", line, got, want)
		}
	}
	sm := s.Sampling()
	if sm.Temperature != 0.2 || sm.TopP != 0.5 || sm.MaxTokens != 16 || sm.Seed != 7 || sm.TopK != 40 || sm.MinP != 0.05 || sm.RepetitionPenalty != 1.1 {
		t.Fatalf("sampling %+v", sm)
	}
	if c := s.Controls(); c.Layer != 6 || c.CapOn || c.SteerOn || c.SteerCoeff != -2 || c.SteerLayer != 5 || c.Cap.P != 0.5 || c.Cap.Window != [2]int{2, 6} || !c.GeneratedOnly {
		t.Fatalf("controls %+v", c)
	}
	events := strings.Join(b.Events(), "\n")
	for _, want := range []string{"say system Be brief.", "control temperature 0.2", "control top_p 0.5", "control max_tokens 16",
		"control seed 7", "mark good", "control clear true", "say system "} {
		if !strings.Contains(events, want) {
			t.Errorf("not recorded: %q in\n%s", want, events)
		}
	}
	if raw, _ := os.ReadFile(transcript); string(raw) != "system: Be brief.\n\n" {
		t.Fatalf("transcript %q", raw)
	}
	if got := s.Run("/quit").Action; got != workbench.Quit {
		t.Fatalf("/quit action %v", got)
	}
	if res := s.Run("/replay x.jsonl"); res.Action != workbench.Replay || res.Arg != "x.jsonl" {
		t.Fatalf("/replay %+v", res)
	}
}

// A bad command is one line naming the problem; it changes neither the controls nor the sampling.
func TestBadCommandsChangeNothing(t *testing.T) {
	b := &workbenchtest.Backend{Axis: "axis"}
	s := newSession(b)
	c0, s0 := s.Controls(), s.Sampling()
	for line, want := range map[string]string{
		"/layer 12":           "layer 12: the model has layers 0 to 7",
		"/layer":              "/layer N: the layer to plot",
		"/cap p33":            "no percentile p33 in the calibration",
		"/cap 7:2":            "layers 7:2 are not a window",
		"/cap 3-5":            "/cap: on, off, a percentile (p25) or a layer window (2:6)",
		"/cap pp":             `percentile "pp"`,
		"/steer lots":         "/steer lots: give a strength c from -20 to 20",
		"/steer 1 x":          `layer "x" is not a number`,
		"/steer 1 2 3":        "a strength and at most a layer",
		"/set temperature -1": "want a non-negative number",
		"/set top-p 2":        "(0, 1]",
		"/set top-p 0":        "top-p 0",
		"/set max-tokens 0":   "give at least 1",
		"/set seed 1.5":       "whole number",
		"/set color red":      "temperature, top-p, top-k, min-p, repetition-penalty, max-tokens, seed, context or positions",
		"/set temperature":    "/set temperature|top-p|top-k|min-p|repetition-penalty|max-tokens|seed VALUE",
		"/mark good":          "not recording (--no-record): nothing to mark",
		"/save":               "/save FILE",
		"/cancel x":           "training is not available",
	} {
		if got := s.Run(line).Notice; !strings.Contains(got, want) || strings.Contains(got, "\n") {
			t.Errorf("%s: %q, want one line with %q", line, got, want)
		}
	}
	if s.Controls() != c0 || s.Sampling() != s0 || b.Last() != c0 {
		t.Fatalf("bad commands changed the session: %+v %+v", s.Controls(), s.Sampling())
	}
}

// Stop ends a reply at once, keeps what streamed, marks it stopped and records the stop; /clear waits for no reply.
func TestStopKeepsTheStreamedText(t *testing.T) {
	b := &workbenchtest.Backend{Axis: "axis", Delay: 20 * time.Millisecond}
	s := newSession(b)
	first := make(chan struct{})
	done := make(chan string)
	go func() {
		n := 0
		reply, _ := s.Send(context.Background(), "Talk for a while.", func(workbench.Token) {
			if n++; n == 2 {
				close(first)
			}
		})
		done <- reply
	}()
	<-first
	if !s.Generating() {
		t.Fatal("not generating mid-reply")
	}
	if got := s.Run("/clear").Notice; got != workbench.ErrBusy.Error() {
		t.Fatalf("/clear mid-reply: %q", got)
	}
	if _, err := s.Send(context.Background(), "again", nil); err != workbench.ErrBusy {
		t.Fatalf("a second send mid-reply: %v", err)
	}
	s.Stop()
	reply := <-done
	turns := s.Turns()
	last := turns[len(turns)-1]
	if !last.Stopped || last.Text != reply || reply == "" || strings.Contains(reply, "helps.") || len(last.Tokens) < 2 {
		t.Fatalf("stopped reply %q, turn %+v", reply, last)
	}
	if ev := b.Events(); ev[len(ev)-1] != "control stopped true" {
		t.Fatalf("events %v", ev)
	}
	full, err := s.Send(context.Background(), "Hello", nil)
	if err != nil || !strings.HasSuffix(full, "helps.") || s.Generating() {
		t.Fatalf("the next reply: %q %v", full, err)
	}
	if n := len(s.Turns()); n != 4 {
		t.Fatalf("%d turns after two exchanges", n)
	}
}

// The REPL answers with the table's lines, runs the slow part of a command in line, and leaves on /quit.
func TestREPL(t *testing.T) {
	b := &workbenchtest.Backend{Axis: "axis"}
	jobs := &workbenchtest.Jobs{}
	s := workbench.New(b, workbench.Options{Sampling: workbench.DefaultSampling(), Controls: workbench.DefaultControls(8), Jobs: jobs})
	var out strings.Builder
	in := "Hello\n/cap on\n/tint\nAgain\n/train sft --data x.jsonl\n/jobs\n/frobnicate\n/quit\nnever sent\n"
	r := &workbench.REPL{Session: s, In: strings.NewReader(in), Out: &out}
	r.JobUpdate(workbench.JobUpdate{ID: "sft-1", Kind: "sft", State: "running", Step: 3, Total: 10, Loss: 1.5})
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"Reply number 1 to \"Hello\"", "capping at p25 on layers 3:5", "projection summaries on",
		"layer 4 projection: mean", "starting a sft job ...\nstarted job sft-1", "sft-1 running 3/10 loss 1.500", "unknown command /frobnicate"} {
		if !strings.Contains(got, want) {
			t.Errorf("REPL output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "never sent") || len(s.Turns()) != 4 {
		t.Fatalf("the REPL went on after /quit:\n%s", got)
	}
}

// Any line is a command the table answers or refuses: never a panic, never a change made by a refused one.
func FuzzCommandLine(f *testing.F) {
	for _, c := range workbench.Commands() {
		f.Add(c.Name + " " + c.Args)
	}
	f.Add("/cap p25 2:6 off")
	f.Add("/steer -1e309 99")
	f.Add("/set seed 18446744073709551616")
	f.Fuzz(func(t *testing.T, line string) {
		if strings.HasPrefix(line, "/save") || strings.HasPrefix(line, "/replay") {
			return // they name files
		}
		b := &workbenchtest.Backend{Axis: "axis"}
		s := newSession(b)
		res := s.Run(line)
		if res.Slow != nil {
			res.Slow()
		}
		if c := s.Controls(); c != b.Last() {
			t.Fatalf("%q: the session's controls %+v are not the backend's %+v", line, c, b.Last())
		}
	})
}

// /train refuses a missing data file before any run folder exists.
func TestTrainChecksItsDataFileFirst(t *testing.T) {
	runs := t.TempDir()
	jobs := &workbench.ProcessJobs{Exe: "/nonexistent/keel", Model: "m", RunsDir: runs}
	for _, args := range [][]string{{"--data", "/nope/chats.jsonl"}, {"--data=/nope/chats.jsonl"}, {"--prompts", "/nope/p.jsonl"}} {
		_, err := jobs.Start("sft", args)
		if err == nil || !strings.Contains(err.Error(), "/nope/") || !strings.Contains(err.Error(), "no such file") {
			t.Fatalf("%v: %v", args, err)
		}
	}
	if entries, _ := os.ReadDir(runs); len(entries) != 0 {
		t.Fatalf("a refused /train left %d run folders", len(entries))
	}
	if _, err := jobs.Start("dpo", nil); err == nil || !strings.Contains(err.Error(), "sft, alol or ppo") {
		t.Fatalf("an unknown trainer: %v", err)
	}
}

// A model of the paper's table starts plotting and steering at its analysis layer with the paper's best cap; a
// model of another shape, or not in the table, starts at the defaults.
func TestDefaultControlsForThePapersModels(t *testing.T) {
	c := workbench.DefaultControlsFor(64, "/hub/models--Qwen--Qwen3-32B/snapshots/abc")
	if c.Layer != 32 || c.SteerLayer != 32 || c.Cap.Window != [2]int{46, 54} || c.Cap.P != 0.25 || c.CapOn {
		t.Fatalf("Qwen3-32B: %+v", c)
	}
	c = workbench.DefaultControlsFor(80, "", "llama-3.3-70b")
	if c.Layer != 40 || c.Cap.Window != [2]int{56, 72} {
		t.Fatalf("by the axis's model: %+v", c)
	}
	if got, want := workbench.DefaultControlsFor(46, "google/gemma-2-27b-it"), workbench.DefaultControls(46); got.Layer != 22 || got.Cap != want.Cap {
		t.Fatalf("Gemma (no paper cap): %+v", got)
	}
	if got, want := workbench.DefaultControlsFor(8, "Qwen/Qwen3-32B"), workbench.DefaultControls(8); got != want {
		t.Fatalf("a different shape under the same name: %+v", got)
	}
}
