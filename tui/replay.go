package tui

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/workbench"
)

// maxTerm bounds a recorded terminal size a replay draws at.
const maxTerm = 1000

// The front end's own settings, recorded so that a replay draws what was drawn.
const (
	tintNote = "tint"
	termNote = "term"
)

// Frames draws a recorded session as the workbench drew it: the screen after every event and every token of
// every reply, with the chat, its tint, the plot and the controls, at cols x rows (0: the recorded size).
func Frames(rec *sessions.Session, st Styles, cols, rows int) ([]sessions.Frame, error) {
	return FramesEvery(rec, st, cols, rows, 0)
}

// FramesEvery draws the frames at most every interval seconds of session time (a reply's tokens within one
// interval are one frame, the last event's screen), and always the last: a film of the session at a frame rate,
// for exports; 0 draws every event.
func FramesEvery(rec *sessions.Session, st Styles, cols, rows int, interval float64) ([]sessions.Frame, error) {
	if cols <= 0 || rows <= 0 {
		cols, rows = rec.Header.Term.Cols, rec.Header.Term.Rows
	}
	if cols <= 0 || rows <= 0 {
		cols, rows = 80, 24
	}
	fixedSize := cols != rec.Header.Term.Cols || rows != rec.Header.Term.Rows
	var a *App
	var frames []sessions.Frame
	var pending *sessions.Event
	err := workbench.ReplaySession(rec, func(s *workbench.Session, e sessions.Event) {
		if a == nil {
			a = New(Options{Session: s, Styles: st, Tint: true, Memory: func() uint64 { return 0 }})
			a.replaying, a.notice = true, ""
			a.resize(cols, rows)
		}
		if e.Type == sessions.Control {
			switch e.Name {
			case tintNote:
				json.Unmarshal(e.Value, &a.tint)
			case termNote:
				var t sessions.Term
				if json.Unmarshal(e.Value, &t) == nil && t.Cols > 0 && t.Rows > 0 && t.Cols <= maxTerm && t.Rows <= maxTerm && !fixedSize {
					a.resize(t.Cols, t.Rows)
				}
			}
			a.chat.invalidate()
		}
		a.generating = s.Generating()
		if interval > 0 && len(frames) > 0 && e.T-frames[len(frames)-1].T < interval {
			pending = &e // drawn if no later event starts a new frame
			return
		}
		pending = nil
		a.rerenderChat()
		a.refresh()
		frames = append(frames, sessions.Frame{T: e.T, Screen: a.View()})
	})
	if pending != nil && err == nil {
		a.rerenderChat()
		a.refresh()
		frames = append(frames, sessions.Frame{T: pending.T, Screen: a.View()})
	}
	return frames, err
}

// replayState is a recorded session's frames playing over the screen.
type replayState struct {
	path    string
	frames  []sessions.Frame
	pos     int
	speed   float64
	playing bool
	clock   float64 // session time reached
	last    time.Time
}

type replayTickMsg time.Time

func replayTick() tea.Cmd {
	return tea.Tick(50*time.Millisecond, func(t time.Time) tea.Msg { return replayTickMsg(t) })
}

func (r *replayState) status() string {
	state := "paused"
	if r.playing {
		state = "playing"
	}
	return fmt.Sprintf("replay %s %d/%d x%g", state, r.pos+1, len(r.frames), r.speed)
}

// view is the frame in play with the replay's status as its first line.
func (r *replayState) view(a *App) string {
	lines := strings.SplitN(r.frames[r.pos].Screen, "\n", 2)
	status := a.st.Title.Render(" keel ") + a.st.Dim.Render(" │ ") + a.st.Rec.Render(r.status()) + a.st.Dim.Render(" │ ") +
		filepath.Base(r.path) + a.st.Dim.Render(" │ space pause · +/- speed · → step · esc leave")
	if len(lines) == 2 {
		return truncate(status, a.width) + "\n" + lines[1]
	}
	return status
}

// replayReadyMsg is a recording's frames, drawn off the UI goroutine; at is the replay they replace (a resize
// redraws them at the new size and keeps the place), nil for a new one.
type replayReadyMsg struct {
	path   string
	frames []sessions.Frame
	err    error
	at     *replayState
}

// startReplay loads a recording and draws its frames at the current size, as a tea.Cmd (a long session takes a
// while to draw).
func (a *App) startReplay(path string, at *replayState) tea.Cmd {
	st, cols, rows, session := a.st, a.width, a.height, a.session
	return func() tea.Msg {
		s, err := session.OpenRecording(path)
		if err != nil {
			return replayReadyMsg{path: path, err: err, at: at}
		}
		frames, err := Frames(s, st, cols, rows)
		if err == nil && len(frames) == 0 {
			err = fmt.Errorf("nothing to replay")
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", path, err)
		}
		return replayReadyMsg{path: path, frames: frames, err: err, at: at}
	}
}

// replayReady starts the replay of drawn frames, or takes a redraw's frames in place of the old ones.
func (a *App) replayReady(msg replayReadyMsg) tea.Cmd {
	if msg.err != nil {
		a.notice = msg.err.Error()
		return nil
	}
	if r := msg.at; r != nil {
		if a.replay != r { // left, or replaced, while it was redrawn
			return nil
		}
		r.frames, r.pos = msg.frames, min(r.pos, len(msg.frames)-1)
		return nil
	}
	a.replay = &replayState{path: msg.path, frames: msg.frames, speed: 1, playing: true, last: a.opt.Now()}
	a.notice = "replaying " + filepath.Base(msg.path)
	return replayTick()
}

func (a *App) replayTick(msg replayTickMsg) tea.Cmd {
	r := a.replay
	if r == nil {
		return nil
	}
	now := time.Time(msg)
	if r.playing {
		r.clock += now.Sub(r.last).Seconds() * r.speed
		for r.pos+1 < len(r.frames) && r.frames[r.pos+1].T-r.frames[0].T <= r.clock {
			r.pos++
		}
		if r.pos+1 == len(r.frames) {
			r.playing = false // it pauses at the end
		}
	}
	r.last = now
	return replayTick()
}

func (a *App) replayKey(msg tea.KeyMsg) bool {
	r, k := a.replay, a.keys
	switch {
	case key.Matches(msg, k.PlayPause):
		r.playing = !r.playing
	case key.Matches(msg, k.Faster):
		r.speed = math.Min(r.speed*2, 64)
	case key.Matches(msg, k.Slower):
		r.speed = math.Max(r.speed/2, 1.0/16)
	case key.Matches(msg, k.StepFwd):
		r.playing = false
		if r.pos+1 < len(r.frames) {
			r.pos++
			r.clock = r.frames[r.pos].T - r.frames[0].T
		}
	default:
		return false
	}
	return true
}
