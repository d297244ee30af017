package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// tmuxSession drives the real binary in a detached tmux session of a fixed size.
type tmuxSession struct {
	t    *testing.T
	name string
}

func startTmux(t *testing.T, env []string, args ...string) *tmuxSession {
	t.Helper()
	quoted := []string{"env", "KEEL_TEST_MAIN=1"}
	for _, a := range append(append(env, os.Args[0]), args...) {
		quoted = append(quoted, shellQuote(a))
	}
	return startTmuxCommand(t, 140, 42, strings.Join(quoted, " "))
}

// startTmuxCommand runs a shell command line in a detached tmux session of cols x rows.
func startTmuxCommand(t *testing.T, cols, rows int, command string) *tmuxSession {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux is not installed (apt-get install tmux): the end-to-end TUI tests drive keel through it")
	}
	name := fmt.Sprintf("keel-test-%d", time.Now().UnixNano())
	// The pane outlives the command by a minute, so that a failure to start shows on the captured screen.
	script := command + `; echo "exited with status $?"; sleep 60`
	tm := exec.Command("tmux", "new-session", "-d", "-s", name, "-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows), "sh", "-c", script)
	tm.Env = append(os.Environ(), "TERM=xterm-256color") // the tmux client's own terminal; keel's is set in env
	if out, err := tm.CombinedOutput(); err != nil {
		t.Fatalf("tmux: %v %s", err, out)
	}
	s := &tmuxSession{t, name}
	t.Cleanup(func() { exec.Command("tmux", "kill-session", "-t", name).Run() })
	return s
}

func shellQuote(a string) string { return "'" + strings.ReplaceAll(a, "'", `'\''`) + "'" }

func (s *tmuxSession) keys(keys ...string) {
	s.t.Helper()
	if out, err := exec.Command("tmux", append([]string{"send-keys", "-t", s.name}, keys...)...).CombinedOutput(); err != nil {
		s.t.Fatalf("send-keys %v: %v %s", keys, err, out)
	}
}

func (s *tmuxSession) screen() string {
	out, _ := exec.Command("tmux", "capture-pane", "-t", s.name, "-p").Output()
	return string(out)
}

// waitFor polls the screen until ok, or fails showing it.
func (s *tmuxSession) waitFor(what string, timeout time.Duration, ok func(string) bool) string {
	s.t.Helper()
	var screen string
	for start := time.Now(); time.Since(start) < timeout; time.Sleep(100 * time.Millisecond) {
		if screen = s.screen(); ok(screen) {
			return screen
		}
	}
	s.t.Fatalf("waited %s for %s; the screen:\n%s", timeout, what, screen)
	return ""
}

// The workbench end to end on the embedded model, through tmux as over SSH: a streamed reply with its
// projections plotted, capping toggled (the cap line and the status line change), a short SFT job whose
// progress bar advances, and a clean quit; in colour and with TERM=dumb / NO_COLOR.
func TestTUIEndToEndInTmux(t *testing.T) {
	torchtest.Runtime(t)
	for _, env := range [][]string{{"TERM=xterm-256color"}, {"TERM=dumb", "NO_COLOR=1"}} {
		t.Run(strings.Join(env, ","), func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "chats.jsonl")
			var b strings.Builder
			for i := 0; i < 40; i++ {
				fmt.Fprintf(&b, `{"messages":[{"role":"user","content":"What is %d plus 1?"},{"role":"assistant","content":"Certainly. %d plus 1 is %d."}]}`+"\n", i, i, i+1)
			}
			os.WriteFile(data, []byte(b.String()), 0o644)
			s := startTmux(t, append(env, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir), "--threads", "1", "--runs", filepath.Join(dir, "runs"), "--max-tokens", "48")
			s.waitFor("the workbench", 60*time.Second, func(sc string) bool { return strings.Contains(sc, "Assistant Axis, layer 4") })
			s.keys("Who are you?", "Enter")
			screen := s.waitFor("a streamed reply with a plot", 60*time.Second, func(sc string) bool {
				return strings.Contains(sc, "model ") && plotted(sc, "token") && regexp.MustCompile(`\d ┤`).MatchString(sc) && strings.Contains(sc, "ready")
			})
			capOn := regexp.MustCompile(`cap p\d+ layers \d+:\d+`)
			if plotted(screen, "tau") || capOn.MatchString(screen) {
				t.Fatalf("capping is on before it was switched on:\n%s", screen)
			}
			if strings.Contains(env[0], "dumb") && strings.Contains(screen, "\x1b") {
				t.Fatalf("escape sequences on a dumb terminal")
			}
			s.keys("C-k")
			screen = s.waitFor("the status line to show the cap", 10*time.Second, func(sc string) bool { return capOn.MatchString(sc) })
			// The cap line is drawn on a capped layer: plot the window's first layer (the best window from the
			// embedded model's capping.json need not hold the middle one).
			first := regexp.MustCompile(`cap p\d+ layers (\d+):`).FindStringSubmatch(screen)[1]
			s.keys("/layer "+first, "Enter")
			s.waitFor("the plot on layer "+first, 10*time.Second, func(sc string) bool { return strings.Contains(sc, "Assistant Axis, layer "+first) })
			s.keys("Tell me more.", "Enter")
			s.waitFor("the cap line in the plot", 60*time.Second, func(sc string) bool { return plotted(sc, "tau") })
			s.keys("/train sft --data "+data+" --steps 6 --batch 2 --seq-len 64 --save-every 3", "Enter")
			started := s.waitFor("the job to start", 60*time.Second, func(sc string) bool { return strings.Contains(sc, "started job sft-") })
			id := regexp.MustCompile(`started job (sft-[0-9a-f-]+)`).FindStringSubmatch(started)[1]
			seen := map[string]bool{}
			s.waitFor("the job's progress to advance to the end", 120*time.Second, func(sc string) bool {
				for _, m := range regexp.MustCompile(`(\d)/6 loss`).FindAllStringSubmatch(sc, -1) {
					seen[m[1]] = true
				}
				return strings.Contains(sc, "done 6/6")
			})
			if len(seen) < 2 {
				t.Fatalf("the progress bar never showed an intermediate step: %v", seen)
			}
			// Fine-tune, load, watch the axis move: the job's final weights and a checkpoint load without flags,
			// with the base model's axis, and a reply streams with its plot.
			for _, ref := range []string{id, id + "@3"} {
				s.keys("/load "+ref, "Enter")
				s.waitFor("/load "+ref, 60*time.Second, func(sc string) bool {
					if strings.Contains(sc, "could not load") {
						t.Fatalf("/load %s refused:\n%s", ref, sc)
					}
					return strings.Contains(sc, "loaded "+ref) && strings.Contains(sc, "axis of the base model")
				})
				// A prompt of its own, so that the wait ends with this reply (the status reads "generating"
				// from the moment the prompt shows in the chat until the reply is done; typed into the input
				// line, it shows there first, beside the last reply's "ready").
				prompt := "Who are you, " + ref[len(ref)-2:] + "?"
				s.keys(prompt, "Enter")
				s.waitFor("a reply from "+ref+" with its plot", 60*time.Second, func(sc string) bool {
					return strings.Contains(sc, "you "+prompt) && plotted(sc, "token") && regexp.MustCompile(`\d ┤`).MatchString(sc) && strings.Contains(sc, "ready")
				})
			}
			s.keys("C-d")
			s.waitFor("keel to quit", 10*time.Second, func(sc string) bool { return strings.Contains(sc, "exited with status 0") })
			// One session per model chatted with (a session's header names its model): the base, the job's final
			// weights, its checkpoint. The first holds the job's changes of state.
			sessions, _ := filepath.Glob(filepath.Join(dir, "keel", "sessions", "*.jsonl"))
			if len(sessions) != 3 {
				t.Fatalf("want a recorded session for each of the three models: %v", sessions)
			}
			slices.Sort(sessions)
			base, _ := os.ReadFile(sessions[0])
			if !regexp.MustCompile(`\{"type":"job".*"name":"` + id + `".*"label":"done"\}`).Match(base) {
				t.Fatalf("the first session does not record the job's end:\n%s", base)
			}
		})
	}
}

// plotted reports whether the screen's plot shows a line: in the legend (with colour) or named at its right end
// (without).
func plotted(screen, line string) bool {
	return strings.Contains(screen, "■ "+line) || regexp.MustCompile(`[─╮╯╰╭┼] [a-z, ]*\b`+line+`\b`).MatchString(screen)
}

// A 40-turn scripted chat in the workbench, in tmux, never decodes past the model's window: the status line
// shows the context used against the window, and the line that says the window is reached names /clear.
func TestTUILongChatStaysInTheWindow(t *testing.T) {
	torchtest.Runtime(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "chat.jsonl")
	s := startTmux(t, []string{"TERM=xterm-256color", "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir}, "--threads", "1", "--runs", filepath.Join(dir, "runs"),
		"--max-tokens", "120", "--record", file)
	s.waitFor("the workbench", 60*time.Second, func(sc string) bool { return strings.Contains(sc, "Assistant Axis, layer 4") })
	ctx := regexp.MustCompile(`ctx (\d+)/1024`)
	reached := false
	for i := 0; i < 40 && !reached; i++ {
		prompt := fmt.Sprintf("Tell me a long story about the sea, part %d.", i)
		s.keys(prompt, "Enter")
		screen := s.waitFor("reply "+fmt.Sprint(i), 60*time.Second, func(sc string) bool {
			return strings.Contains(sc, "/clear starts afresh") || strings.Contains(sc, "you "+prompt) && strings.Contains(sc, "ready") && ctx.MatchString(sc)
		})
		reached = strings.Contains(screen, "/clear starts afresh")
		if m := ctx.FindStringSubmatch(screen); m != nil {
			if used, _ := strconv.Atoi(m[1]); used > 1024 {
				t.Fatalf("the status line shows %d of 1024 positions", used)
			}
		}
	}
	if !reached {
		t.Fatal("40 long turns never reached the window: the test proves nothing")
	}
	s.keys("C-c") // the refused message stays in the input: drop it, then quit
	s.keys("C-d")
	s.waitFor("keel to quit", 10*time.Second, func(sc string) bool { return strings.Contains(sc, "exited with status 0") })
	recordedPastWindow(t, file, 1024)
}
