// Package workbenchtest is a scripted workbench backend for the front ends' tests: it replies with fixed words
// whose projections fall turn by turn, as a drifting model's would, and remembers what it was told.
package workbenchtest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/workbench"
)

// Backend is the scripted backend: 8 layers, an axis when Axis is set, a calibration with p1..p75.
type Backend struct {
	Axis      string
	Recording string        // the session file Info reports ("" : not recording)
	Delay     time.Duration // between tokens
	DriftLine float64       // what Scale reports as the drift line (the Assistant's mean is 3)
	GPU       [2]int64      // allocated and reserved bytes GPUMemory reports (zero: not on a GPU)
	Window    int           // the positions Context reports the model has (0: no window)
	// Rec, when set, receives what a model's backend records: turns, tokens with a projection on every layer,
	// settings (its header should list layers 0-7).
	Rec *sessions.Recorder

	mu       sync.Mutex
	layer    int
	capOn    bool
	controls []workbench.Controls
	events   []string // what was recorded, "say user hello", "control clear true", "mark good", "job ID state"
	replies  int
	turns    int // turns said or generated: a recording's numbering
}

// Info implements workbench.Backend.
func (f *Backend) Info() workbench.Info {
	return workbench.Info{Model: "/models/persona", Device: "cpu", DType: "f32", Layers: 8, DModel: 256, Axis: f.Axis, Window: f.Window,
		Percentiles: []float64{0.01, 0.25, 0.5, 0.75}, Recording: f.Recording}
}

// Apply implements workbench.Backend.
func (f *Backend) Apply(c workbench.Controls) error {
	if c.Layer < 0 || c.Layer >= 8 {
		return fmt.Errorf("layer %d: the model has layers 0 to 7", c.Layer)
	}
	if c.CapOn {
		if err := c.Cap.Check(8); err != nil {
			return err
		}
		switch c.Cap.P {
		case 0.01, 0.25, 0.5, 0.75:
		default:
			return fmt.Errorf("no percentile p%g in the calibration (it has p1, p25, p50, p75)", c.Cap.P*100)
		}
	}
	f.mu.Lock()
	f.controls = append(f.controls, c)
	f.layer, f.capOn = c.Layer, c.CapOn
	f.mu.Unlock()
	return nil
}

// Last is the controls last applied.
func (f *Backend) Last() workbench.Controls {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.controls[len(f.controls)-1]
}

// Events are what was recorded, in order.
func (f *Backend) Events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

// EventsOf are the recorded events that begin with prefix ("job ", "mark ").
func (f *Backend) EventsOf(prefix string) []string {
	var out []string
	for _, e := range f.Events() {
		if strings.HasPrefix(e, prefix) {
			out = append(out, e)
		}
	}
	return out
}

func (f *Backend) note(format string, a ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, fmt.Sprintf(format, a...))
	return nil
}

// Context implements workbench.Backend: four characters and three markers a position, as a rough tokenizer
// would count, in a window of Window positions (0: none).
func (f *Backend) Context(msgs []tokenizer.Message) (int, int, error) {
	n := 0
	for _, m := range msgs {
		n += 3 + (len(m.Content)+3)/4
	}
	return n, f.Window, nil
}

// Tau implements workbench.Backend.
func (f *Backend) Tau(c workbench.Controls, layer int) float64 {
	if !c.CapOn || layer < c.Cap.Window[0] || layer >= c.Cap.Window[1] {
		return math.NaN()
	}
	return 1.5
}

// GPUMemory implements workbench.GPUMemory.
func (f *Backend) GPUMemory() (allocated, reserved int64, ok bool) {
	return f.GPU[0], f.GPU[1], f.GPU[1] > 0
}

// Scale implements workbench.Backend.
func (f *Backend) Scale(layer int) (float64, float64) { return f.DriftLine, 3 }

// Generate implements workbench.Backend: "Certainly. Reply number N to "...", ..." word by word.
func (f *Backend) Generate(ctx context.Context, msgs []tokenizer.Message, s workbench.Sampling, emit func(workbench.Token)) (string, error) {
	f.mu.Lock()
	f.replies++
	f.turns++
	n := f.replies
	f.mu.Unlock()
	f.mu.Lock()
	layer, capOn := f.layer, f.capOn
	f.mu.Unlock()
	if f.Rec != nil {
		if err := f.Rec.Add(sessions.Event{Type: sessions.TurnStart, Role: "assistant"}); err != nil {
			return "", err
		}
	}
	words := strings.Fields(fmt.Sprintf("Certainly. Reply number %d to %q, in the Assistant's words. I hope this helps.", n, msgs[len(msgs)-1].Content))
	var out strings.Builder
	for i, w := range words {
		if f.Delay > 0 {
			select {
			case <-ctx.Done():
				return out.String(), ctx.Err()
			case <-time.After(f.Delay):
			}
		}
		piece := " " + w
		if i == 0 {
			piece = w
		}
		out.WriteString(piece)
		// As a model's backend does, the projection shown is the one recorded (float32).
		t := workbench.Token{Text: piece, Proj: float64(float32(f.proj(n, i, layer))), HasProj: true, Capped: capOn && i%3 == 0}
		if f.Rec != nil {
			proj := make([]float32, 8)
			for l := range proj {
				proj[l] = float32(f.proj(n, i, l))
			}
			var caps []float32
			if t.Capped {
				caps = []float32{0.5}
			}
			if err := f.Rec.Add(sessions.Event{Type: sessions.Token, ID: i + 1, Piece: piece, Proj: proj, Caps: caps}); err != nil {
				return out.String(), err
			}
		}
		emit(t)
	}
	if f.Rec != nil {
		if err := f.Rec.Add(sessions.Event{Type: sessions.TurnEnd, Role: "assistant", Text: out.String()}); err != nil {
			return out.String(), err
		}
	}
	return out.String(), nil
}

// proj is the scripted projection of reply n's token i at a layer: falling turn by turn, deeper layers higher.
func (f *Backend) proj(n, i, layer int) float64 {
	return 3 - float64(n) - 0.1*float64(i) + 0.25*float64(layer-4)
}

// Say implements workbench.Recorder.
func (f *Backend) Say(role, text string) error {
	f.mu.Lock()
	f.turns++
	f.mu.Unlock()
	if f.Rec != nil {
		for _, e := range []sessions.Event{{Type: sessions.TurnStart, Role: role}, {Type: sessions.Token, Piece: text}, {Type: sessions.TurnEnd, Role: role, Text: text}} {
			if err := f.Rec.Add(e); err != nil {
				return err
			}
		}
	}
	return f.note("say %s %s", role, text)
}

// Control implements workbench.Recorder.
func (f *Backend) Control(name string, value any) error {
	if f.Rec != nil {
		raw, err := json.Marshal(value)
		if err != nil {
			return err
		}
		if err := f.Rec.Add(sessions.Event{Type: sessions.Control, Name: name, Value: raw}); err != nil {
			return err
		}
	}
	return f.note("control %s %v", name, value)
}

// Mark implements workbench.Recorder.
func (f *Backend) Mark(label string) (int, error) {
	f.mu.Lock()
	turn := f.turns
	f.mu.Unlock()
	if f.Rec != nil {
		if err := f.Rec.Add(sessions.Event{Type: sessions.Marker, Label: label}); err != nil {
			return 0, err
		}
		turn = f.Rec.Turn()
	}
	return turn, f.note("mark %s", label)
}

// RecordJob implements workbench.Recorder.
func (f *Backend) RecordJob(u workbench.JobUpdate) error { return f.note("job %s %s", u.ID, u.State) }

// Close implements workbench.Backend.
func (f *Backend) Close() error { return nil }

// Jobs is a JobRunner that starts nothing and remembers what it was asked.
type Jobs struct {
	mu      sync.Mutex
	Started [][]string
}

// Start implements workbench.JobRunner.
func (j *Jobs) Start(kind string, args []string) (string, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.Started = append(j.Started, append([]string{kind}, args...))
	return kind + "-1", nil
}

// Cancel implements workbench.JobRunner.
func (j *Jobs) Cancel(id string) error { return nil }

// ModelDir implements workbench.JobRunner.
func (j *Jobs) ModelDir(ref string) (string, error) { return "", fmt.Errorf("no run %q", ref) }

// Sync implements workbench.JobRunner.
func (j *Jobs) Sync(ctx context.Context) error { return nil }
