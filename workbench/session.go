package workbench

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/keel-lab/keel/sessions"
)

// Options configure a session.
type Options struct {
	Sampling Sampling
	Controls Controls
	System   string
	Jobs     JobRunner // nil: /train, /cancel and /load are unavailable
	// Load opens another model or axis for /model, /axis and /load (nil: those commands are unavailable), its
	// recording starting from the session's sampling as it is now.
	Load func(modelDir, axis string, s Sampling) (Backend, error)
	// NoLoad, when Load is nil, says why and what to do instead.
	NoLoad string
	// Policy is what the session may do besides chatting (zero: Local, the machine's own user).
	Policy Policy
}

// Session is one chat: a backend, the conversation, the controls and the sampling. Its methods are safe to call
// from a front end's goroutine while a reply streams on another.
type Session struct {
	opt     Options
	Warning string // why the session did not start as asked ("" when it did)

	mu         sync.Mutex
	backend    Backend
	turns      []Turn
	system     string
	controls   Controls
	sampling   Sampling
	generating bool
	// contextPolicy is ContextStop or ContextDropOldest; ctxUsed the positions the conversation took when last
	// measured (the prompt of the latest reply and the reply).
	contextPolicy string
	ctxUsed       int
	cancel        context.CancelFunc
	closed        bool
	replying      sync.WaitGroup // a reply's stream while it runs: Close waits for it before closing the backend
}

// ErrClosed is the answer to a reply started after the session closed.
var ErrClosed = errors.New("the session is closed")

// ErrBusy is the answer to what must wait for the reply in flight.
var ErrBusy = errors.New("a reply is streaming: ctrl+c stops it first")

// New starts a session on a backend with the options' controls in force. Controls the backend refuses leave
// the session with no intervention, and Warning says why.
func New(b Backend, opt Options) *Session {
	if opt.Policy.Files == nil {
		opt.Policy.Files = LocalFiles{}
	}
	opt.Sampling = opt.Policy.bound(opt.Sampling)
	s := &Session{opt: opt, backend: b, sampling: opt.Sampling, contextPolicy: ContextStop}
	if err := s.Apply(opt.Controls); err != nil {
		s.Warning = err.Error()
		c := opt.Controls
		c.CapOn, c.SteerOn = false, false
		c.Layer = min(max(c.Layer, 0), b.Info().Layers-1)
		s.Apply(c)
	}
	if opt.System != "" {
		if err := s.setSystem(opt.System); err != nil {
			s.Warning = "recording the system prompt: " + err.Error()
		}
	}
	return s
}

// Policy is what the session may do besides chatting.
func (s *Session) Policy() Policy { return s.opt.Policy }

// OpenRecording reads a recorded session the user names (/replay), through the policy's files: a non-file or
// a file over the policy's bound is refused without reading it. A bare name not found is looked for among the
// sessions of Info().Recording's folder.
func (s *Session) OpenRecording(name string) (*sessions.Session, error) {
	files, max := s.opt.Policy.files(), s.opt.Policy.maxRead()
	raw, err := files.ReadFile(name, max)
	if errors.Is(err, fs.ErrNotExist) {
		if rec := s.Info().Recording; rec != "" && !strings.ContainsRune(name, '/') {
			if alt, aerr := s.readSibling(rec, name, max); aerr == nil {
				raw, err = alt, nil
			}
		}
	}
	if err != nil {
		return nil, err
	}
	rec, err := sessions.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", files.Show(name), err)
	}
	rec.Path = name
	return rec, nil
}

// readSibling reads name from the folder of the recording in progress (keel's own sessions folder).
func (s *Session) readSibling(recording, name string, max int64) ([]byte, error) {
	if u, ok := s.opt.Policy.Files.(*UserSpace); ok {
		rel, err := filepath.Rel(u.Dir(), filepath.Join(filepath.Dir(recording), name))
		if err != nil {
			return nil, err
		}
		return u.ReadFile(rel, max)
	}
	return LocalFiles{}.ReadFile(filepath.Join(filepath.Dir(recording), name), max)
}

// Info describes the loaded model.
func (s *Session) Info() Info { return s.current().Info() }

func (s *Session) current() Backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backend
}

// GPUMemory is the backend's CUDA memory, when it is on a CUDA device.
func (s *Session) GPUMemory() (allocated, reserved int64, ok bool) {
	if g, isGPU := s.current().(GPUMemory); isGPU {
		return g.GPUMemory()
	}
	return 0, 0, false
}

// Controls are the controls in force.
func (s *Session) Controls() Controls {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.controls
}

// Sampling is the sampling in force.
func (s *Session) Sampling() Sampling {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sampling
}

// Turns is the conversation so far; a generated turn's tokens grow while it streams.
func (s *Session) Turns() []Turn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Turn, len(s.turns))
	copy(out, s.turns)
	return out
}

// Generating reports whether a reply is streaming.
func (s *Session) Generating() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.generating
}

// Tau is the cap floor at a layer under the controls in force (NaN: none).
func (s *Session) Tau(layer int) float64 {
	s.mu.Lock()
	b, c := s.backend, s.controls
	s.mu.Unlock()
	return b.Tau(c, layer)
}

// Scale is the drift line and the Assistant's mean projection at a layer (NaN when unknown).
func (s *Session) Scale(layer int) (float64, float64) { return s.current().Scale(layer) }

// Apply puts new controls in force; refused ones leave the old in force and the error says why.
func (s *Session) Apply(c Controls) error {
	s.mu.Lock()
	b := s.backend
	if err := b.Apply(c); err != nil {
		s.mu.Unlock()
		return err
	}
	s.controls = c
	s.mu.Unlock()
	return b.Control(sessions.ControlsEvent, controlsRecord(b, c))
}

// ControlsRecord is what a controls event holds: the controls in force and the lines the plot draws under them,
// so that a replay or an export draws what the workbench drew.
type ControlsRecord struct {
	Controls Controls `json:"controls"`
	sessions.PlotLines
}

func controlsRecord(b Backend, c Controls) ControlsRecord {
	finite := func(v float64) *float64 {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil
		}
		return &v
	}
	line, top := b.Scale(c.Layer)
	return ControlsRecord{Controls: c, PlotLines: sessions.PlotLines{Layer: c.Layer, DriftLine: finite(line), Assistant: finite(top), Tau: finite(b.Tau(c, c.Layer))}}
}

// Send adds a user message and streams the reply, calling emit for every token; it returns when the reply ends,
// ctx ends or Stop is called. A stopped reply keeps what streamed.
func (s *Session) Send(ctx context.Context, text string, emit func(Token)) (string, error) {
	stream, err := s.Start(ctx, text)
	if err != nil {
		return "", err
	}
	return stream(emit)
}

// Start adds a user message and an empty reply to the conversation at once, and returns what streams the reply
// (a front end runs it where it may block).
func (s *Session) Start(ctx context.Context, text string) (stream func(emit func(Token)) (string, error), err error) {
	if err := s.opt.Policy.checkMessage(text); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.generating {
		return nil, ErrBusy
	}
	s.turns = append(s.turns, Turn{Role: "user", Text: text})
	used, window, dropped, err := s.fitWindow(s.sampling.MaxTokens)
	if err != nil {
		for _, i := range dropped {
			s.turns[i].Dropped = false
		}
		s.turns = s.turns[:len(s.turns)-1]
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	s.generating, s.cancel = true, cancel
	msgs := messages(s.turns)
	s.turns = append(s.turns, Turn{Role: "assistant"})
	at := len(s.turns) - 1
	b, sampling := s.backend, s.sampling
	s.ctxUsed = used
	return func(emit func(Token)) (string, error) {
		defer cancel()
		s.mu.Lock()
		if s.closed {
			s.generating, s.cancel = false, nil
			s.mu.Unlock()
			return "", ErrClosed
		}
		s.replying.Add(1)
		s.mu.Unlock()
		defer s.replying.Done()
		var err error
		if len(dropped) > 0 {
			err = b.Control("dropped_turns", map[string]any{"turns": dropped, "positions": used, "window": window})
		}
		if err == nil {
			err = b.Say("user", text)
		}
		reply, n := "", 0
		if err == nil {
			reply, err = b.Generate(ctx, msgs, sampling, func(t Token) {
				s.mu.Lock()
				n++
				if at < len(s.turns) {
					s.turns[at].Tokens = append(s.turns[at].Tokens, t)
					s.turns[at].Text += t.Text
				}
				s.mu.Unlock()
				if emit != nil {
					emit(t)
				}
			})
		}
		s.mu.Lock()
		s.ctxUsed = used + n
		s.mu.Unlock()
		if err == nil && window > 0 && used+n >= window {
			err = &WindowReachedError{Window: window}
		}
		stopped := ctx.Err() != nil
		if stopped {
			err = nil
			b.Control("stopped", true)
		}
		s.mu.Lock()
		if at < len(s.turns) {
			if reply != "" && !stopped {
				s.turns[at].Text = reply
			}
			s.turns[at].Stopped = stopped
			reply = s.turns[at].Text
		}
		s.generating, s.cancel = false, nil
		s.mu.Unlock()
		return reply, err
	}, nil
}

// Stop ends the reply in flight; what streamed stays.
func (s *Session) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
}

// Note records a front end's own setting (the tint, the terminal's size), so that a replay draws what it drew.
func (s *Session) Note(name string, value any) error { return s.current().Control(name, value) }

// RecordJob puts a job's change of state into the recording.
func (s *Session) RecordJob(u JobUpdate) error { return s.current().RecordJob(u) }

// Close stops a reply in flight and closes the backend (the recording ends, the model is freed).
func (s *Session) Close() error {
	s.mu.Lock()
	s.closed = true
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Unlock()
	s.replying.Wait()
	return s.current().Close()
}

// setSystem replaces the system prompt (first in the conversation) and records it.
func (s *Session) setSystem(text string) error {
	s.mu.Lock()
	s.system = text
	kept := make([]Turn, 0, len(s.turns)+1)
	if text != "" {
		kept = append(kept, Turn{Role: "system", Text: text})
	}
	for _, t := range s.turns {
		if t.Role != "system" {
			kept = append(kept, t)
		}
	}
	s.turns = kept
	b := s.backend
	s.mu.Unlock()
	return b.Say("system", text)
}

// clear empties the conversation (the system prompt stays) and records it.
func (s *Session) clear() error {
	s.mu.Lock()
	if s.generating {
		s.mu.Unlock()
		return ErrBusy
	}
	s.turns, s.ctxUsed = nil, 0
	if s.system != "" {
		s.turns = []Turn{{Role: "system", Text: s.system}}
	}
	b := s.backend
	s.mu.Unlock()
	return b.Control("clear", true)
}

// swap replaces the backend (a model or axis loaded by /model, /axis, /load): the old one is closed, capping
// and steering are switched off and the plotted layer kept where the new model has it.
func (s *Session) swap(next Backend) error {
	s.mu.Lock()
	old := s.backend
	c := s.controls
	c.CapOn, c.SteerOn = false, false
	c.Layer = min(c.Layer, next.Info().Layers-1)
	c.SteerLayer = min(c.SteerLayer, next.Info().Layers-1)
	s.backend, s.controls = next, c
	system := s.system
	s.mu.Unlock()
	old.Close()
	if err := next.Apply(c); err != nil {
		return err
	}
	if err := next.Control(sessions.ControlsEvent, controlsRecord(next, c)); err != nil {
		return err
	}
	if system != "" {
		return next.Say("system", system)
	}
	return nil
}

// transcript is the conversation as plain text, one "role: text" block per turn.
func (s *Session) transcript() string {
	var out string
	for _, t := range s.Turns() {
		out += fmt.Sprintf("%s: %s\n\n", t.Role, t.Text)
	}
	return out
}

// bound keeps sampling inside the policy's limits.
func (p Policy) bound(s Sampling) Sampling {
	if p.MaxTokens > 0 && s.MaxTokens > p.MaxTokens {
		s.MaxTokens = p.MaxTokens
	}
	return s
}

// checkMessage refuses a message over the policy's length.
func (p Policy) checkMessage(text string) error {
	if p.MaxMessage > 0 {
		if n := utf8.RuneCountInString(text); n > p.MaxMessage {
			return fmt.Errorf("a message holds at most %d characters (this one has %d): shorten it", p.MaxMessage, n)
		}
	}
	return nil
}
