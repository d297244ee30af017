// Package sessions records chats with their activations as JSONL, loads and replays them, re-projects them onto
// other axes, and exports them (asciinema cast, transcript JSON, CSV, PNG, training data).
package sessions

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/internal/datadir"
)

// maxTerm bounds a recorded terminal's columns and rows (a frame is cols x rows).
const maxTerm = 1000

// SchemaVersion is the session format this keel writes and reads.
const SchemaVersion = 1

// Header is a session file's first line.
type Header struct {
	Type             string               `json:"type"` // "header"
	Schema           int                  `json:"schema"`
	Keel             string               `json:"keel"`
	Model            string               `json:"model"`
	ModelSHA256      string               `json:"model_sha256,omitempty"`      // the weights' files hashed whole (small models)
	ModelFingerprint string               `json:"model_fingerprint,omitempty"` // steer.WeightsFingerprint: every model
	Axis             string               `json:"axis,omitempty"`
	AxisSHA256       string               `json:"axis_sha256,omitempty"`
	Layers           []int                `json:"layers"`             // the layers token events carry projections for, in order
	NLayers          int                  `json:"n_layers,omitempty"` // the model's decoder layers
	Interventions    []model.Intervention `json:"interventions,omitempty"`
	Sampling         model.Sampling       `json:"sampling"`
	Seed             uint64               `json:"seed"`
	Term             Term                 `json:"term"`
	Created          time.Time            `json:"created"`
}

// Term is the terminal size the session was recorded at.
type Term struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// Event kinds.
const (
	TurnStart = "turn_start"
	TurnEnd   = "turn_end"
	Token     = "token"
	Control   = "control"
	Marker    = "marker"
	Job       = "job"
)

// Event is one line after the header.
type Event struct {
	Type string  `json:"type"`
	T    float64 `json:"t"` // seconds since the session started
	Turn int     `json:"turn"`
	// turn_start / turn_end
	Role    string `json:"role,omitempty"`
	Text    string `json:"text,omitempty"`
	Context []int  `json:"context,omitempty"` // turn_start of a generated turn: the token ids the model was given
	// token
	ID    int       `json:"id,omitempty"`
	Piece string    `json:"piece,omitempty"`
	Proj  []float32 `json:"proj,omitempty"` // per Header.Layers
	Caps  []float32 `json:"caps,omitempty"` // how far each cap moved h (in the order of the interventions)
	// Special marks a special token (end of turn, a template marker): recorded, never in a mean or a plot.
	Special bool `json:"special,omitempty"`
	// Iv numbers the interventions list that made the token within its turn: 0 the turn start's, n the turn's
	// n-th "interventions" control (-1: not known). With the context and the lists, the turn can be run again.
	Iv int `json:"iv,omitempty"`
	// turn_start of a generated turn: the interventions in force
	Interventions []model.Intervention `json:"interventions,omitempty"`
	// control / marker / job
	Name  string          `json:"name,omitempty"`
	Value json.RawMessage `json:"value,omitempty"`
	Label string          `json:"label,omitempty"`
}

// Session is a loaded file.
type Session struct {
	Path     string
	Header   Header
	Events   []Event
	Warnings []string
}

// DefaultDir is $XDG_DATA_HOME/keel/sessions (~/.local/share/keel/sessions).
func DefaultDir() string {
	if d := os.Getenv("KEEL_SESSIONS"); d != "" {
		return d
	}
	return datadir.Path("sessions")
}

// Recorder appends events to a session file. Token events are buffered and the file is fsynced at every turn
// end, so a killed process loses at most the turn in flight.
type Recorder struct {
	header Header
	f      *os.File
	w      *bufio.Writer
	start  time.Time
	turn   int
	Path   string
}

// Create starts a session file at path with its header.
func Create(path string, h Header) (*Recorder, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	h.Type, h.Schema = "header", SchemaVersion
	if h.Created.IsZero() {
		h.Created = time.Now().UTC()
	}
	r := &Recorder{header: h, f: f, w: bufio.NewWriterSize(f, 1<<16), start: time.Now(), Path: path}
	if err := r.write(h); err != nil {
		f.Close()
		return nil, err
	}
	return r, r.sync()
}

// NewPath is a fresh file name under dir.
func NewPath(dir string) string {
	return filepath.Join(dir, time.Now().UTC().Format("20060102-150405.000000000")+".jsonl")
}

func (r *Recorder) write(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := r.w.Write(append(raw, '\n')); err != nil {
		return err
	}
	return nil
}

func (r *Recorder) sync() error {
	if err := r.w.Flush(); err != nil {
		return err
	}
	return r.f.Sync()
}

func (r *Recorder) now() float64 { return time.Since(r.start).Seconds() }

// Add appends an event (its time and turn filled in when zero).
func (r *Recorder) Add(e Event) error {
	if e.T == 0 {
		e.T = r.now()
	}
	switch e.Type {
	case TurnStart:
		r.turn++
	}
	if e.Turn == 0 {
		e.Turn = r.turn
	}
	if err := r.write(e); err != nil {
		return err
	}
	if e.Type == TurnEnd || e.Type == Control || e.Type == Marker {
		return r.sync()
	}
	return nil
}

// Header is what the file starts with.
func (r *Recorder) Header() Header { return r.header }

// Turn is the number of the latest turn written (the numbering of the file's events and of `keel sessions show`).
func (r *Recorder) Turn() int { return r.turn }

// Close flushes and closes the file.
func (r *Recorder) Close() error {
	err := r.sync()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Load reads a session file. A torn last line (a process killed mid-write) is dropped with a warning; any other
// malformed line is an error naming the line.
func Load(path string) (*Session, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.Path = path
	return s, nil
}

// Parse reads session bytes.
func Parse(raw []byte) (*Session, error) {
	s := &Session{}
	lines := bytes.Split(raw, []byte{'\n'})
	if len(lines) == 0 || len(bytes.TrimSpace(lines[0])) == 0 {
		return nil, fmt.Errorf("empty file: not a keel session")
	}
	if err := json.Unmarshal(lines[0], &s.Header); err != nil || s.Header.Type != "header" {
		return nil, fmt.Errorf("line 1 is not a session header: not a keel session file")
	}
	if s.Header.Schema != SchemaVersion {
		return nil, fmt.Errorf("session schema version %d; this keel reads version %d: open it with the keel that wrote it", s.Header.Schema, SchemaVersion)
	}
	if t := s.Header.Term; t.Cols < 0 || t.Rows < 0 || t.Cols > maxTerm || t.Rows > maxTerm {
		s.Warnings = append(s.Warnings, fmt.Sprintf("the header's terminal of %dx%d is not one a person uses: replayed and exported at 80x24", t.Cols, t.Rows))
		s.Header.Term = Term{Cols: 80, Rows: 24}
	}
	last := len(lines) - 1
	for last > 0 && len(bytes.TrimSpace(lines[last])) == 0 {
		last--
	}
	s.Events = make([]Event, 0, last)
	for i := 1; i <= last; i++ {
		line := lines[i]
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e Event
		if err := json.Unmarshal(line, &e); err != nil || e.Type == "" {
			if i == last {
				s.Warnings = append(s.Warnings, fmt.Sprintf("line %d is incomplete (the recording stopped mid-write) and was skipped", i+1))
				break
			}
			return nil, fmt.Errorf("line %d: not a session event", i+1)
		}
		s.Events = append(s.Events, e)
	}
	return s, nil
}

// Turn is one completed turn of a session.
type Turn struct {
	Index  int
	Role   string
	Text   string
	Tokens []Event
	Start  Event
	Labels []string
}

// Turns groups the events into turns; a turn without its end (the one in flight when recording stopped) is
// left out.
func (s *Session) Turns() []Turn {
	var out []Turn
	open := map[int]*Turn{}
	labels := map[int][]string{}
	for _, e := range s.Events {
		switch e.Type {
		case TurnStart:
			open[e.Turn] = &Turn{Index: e.Turn, Role: e.Role, Start: e}
		case Token:
			if t := open[e.Turn]; t != nil {
				t.Tokens = append(t.Tokens, e)
			}
		case TurnEnd:
			if t := open[e.Turn]; t != nil {
				t.Text = e.Text
				out = append(out, *t)
				delete(open, e.Turn)
			}
		case Marker:
			labels[e.Turn] = append(labels[e.Turn], e.Label)
		}
	}
	for i := range out {
		out[i].Labels = labels[out[i].Index]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// List returns the session files under dir, newest first.
func List(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && filepath.Ext(e.Name()) == ".jsonl" {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out, nil
}

// Log is the session as a reader follows it: every turn (a stopped reply marked so), and between them every
// setting change, clear, intervention change, label and job event, one line each.
func (s *Session) Log() []string {
	var out []string
	turns := map[int]Turn{}
	for _, t := range s.Turns() {
		turns[t.Index] = t
	}
	for _, e := range s.Events {
		switch e.Type {
		case TurnEnd:
			if t, ok := turns[e.Turn]; ok {
				out = append(out, fmt.Sprintf("[%d] %s: %s", t.Index, t.Role, t.Text))
			}
		case Control:
			out = append(out, "   -- "+controlLine(e))
		case Marker:
			out = append(out, fmt.Sprintf("   -- marked turn %d %q", e.Turn, e.Label))
		case Job:
			out = append(out, fmt.Sprintf("   -- job %s %s", e.Name, e.Label))
		}
	}
	return out
}

// controlLine says what a control event changed.
func controlLine(e Event) string {
	switch e.Name {
	case "clear":
		return "chat cleared"
	case "stopped":
		return "the reply above was stopped by the user"
	case "interventions":
		var list []model.Intervention
		if err := json.Unmarshal(e.Value, &list); err != nil || len(list) == 0 {
			return "interventions: none"
		}
		byLabel := map[string][]int{}
		var order []string
		for _, iv := range list {
			if _, ok := byLabel[iv.Label]; !ok {
				order = append(order, iv.Label)
			}
			byLabel[iv.Label] = append(byLabel[iv.Label], iv.Layer)
		}
		var parts []string
		for _, l := range order {
			parts = append(parts, fmt.Sprintf("%s at layers %v", l, byLabel[l]))
		}
		return "interventions: " + strings.Join(parts, ", ")
	}
	return fmt.Sprintf("%s = %s", e.Name, e.Value)
}

// JobState is what a job event carries besides the job's id and state.
type JobState struct {
	Kind  string  `json:"kind,omitempty"`
	Step  int     `json:"step"`
	Total int     `json:"total"`
	Loss  float64 `json:"loss"`
	Final string  `json:"final,omitempty"` // the model folder a finished job wrote
	Error string  `json:"error,omitempty"`
}
