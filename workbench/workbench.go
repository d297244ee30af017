// Package workbench is a chat session apart from any front end: a loaded model with its axis folder, the live
// controls (capping, steering, the plotted layer, sampling), the conversation, the recording, and the one table
// of slash commands that the TUI, the line REPL and the server all answer.
package workbench

import (
	"context"
	"fmt"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/probes"
)

// Sampling is the generation settings /set changes: every sampling setting `keel generate` takes.
type Sampling struct {
	Temperature       float64
	TopP              float64
	TopK              int     // 0: off
	MinP              float64 // 0: off
	RepetitionPenalty float64 // 0 or 1: off
	MaxTokens         int
	Seed              uint64
}

// Model is the sampler's settings.
func (s Sampling) Model() model.Sampling {
	return model.Sampling{Temperature: s.Temperature, TopP: s.TopP, TopK: s.TopK, MinP: s.MinP, RepetitionPenalty: s.RepetitionPenalty, Seed: s.Seed}
}

// Check refuses settings generation would reject, with the line that names the fix.
func (s Sampling) Check() error {
	if err := s.Model().Check(); err != nil {
		return err
	}
	if s.TopP == 0 {
		return fmt.Errorf("top-p 0: give a number in (0, 1] (1 = off)")
	}
	if s.MaxTokens < 1 {
		return fmt.Errorf("max-tokens %d: give at least 1", s.MaxTokens)
	}
	return nil
}

// DefaultSampling is the workbench's settings before flags and the config file.
func DefaultSampling() Sampling { return Sampling{Temperature: 0.7, TopP: 0.9, MaxTokens: 256} }

// Controls are the live interventions and the plotted layer.
type Controls struct {
	CapOn      bool
	Cap        probes.CapRule // the capped window and role-ward percentile
	SteerOn    bool
	SteerCoeff float64 // c: coeff = c x the layer's average residual norm
	SteerLayer int
	Layer      int // the plotted layer
	// GeneratedOnly makes the cap and the steer act only at the positions that choose reply tokens (the prompt's
	// last and the reply's), leaving the conversation so far as the model read it; false acts at every position.
	GeneratedOnly bool
}

// DefaultControls start with no intervention, plotting and steering at the middle layer, capping a quarter of
// the layers around it at p25 once switched on.
func DefaultControls(layers int) Controls {
	mid, half := layers/2, max(1, layers/8)
	return Controls{Cap: probes.CapRule{Window: [2]int{max(0, mid-half), min(layers, mid+half)}, P: 0.25}, SteerCoeff: -1, SteerLayer: mid, Layer: mid}
}

// StartControls are a new chat's controls: the defaults, capping (once switched on) with the setting
// `keel eval capping` found best when the axis folder knows it.
func StartControls(info Info) Controls {
	return DefaultControlsFor(info.Layers, info.Model, info.AxisModel).WithCap(info.BestCap, info.Layers)
}

// DefaultControlsFor are DefaultControls for a model the Assistant Axis paper studied (named by any of names: a
// Hugging Face id, a cache path, the release's folder): plotting and steering at its analysis layer, and the
// cap at its best setting where the paper calibrated one. Other models get DefaultControls.
func DefaultControlsFor(layers int, names ...string) Controls {
	c := DefaultControls(layers)
	for _, name := range names {
		m, ok := probes.PaperModelFor(name)
		if !ok || m.Layers != layers {
			continue
		}
		c.Layer, c.SteerLayer = m.TargetLayer, m.TargetLayer
		return c.WithCap(m.Cap, layers)
	}
	return c
}

// WithCap starts the cap controls at a capping setting's id ("layers_3:5-p0.25"); an id that does not fit the
// model leaves them as they are.
func (c Controls) WithCap(id string, layers int) Controls {
	r, err := probes.ParseCapID(id)
	if err != nil || r.Check(layers) != nil {
		return c
	}
	c.Cap = r
	return c
}

// Summary names the interventions in force ("" when none).
func (c Controls) Summary() string {
	var s string
	if c.CapOn {
		s = fmt.Sprintf("cap %s layers %d:%d", probes.PercentileName(c.Cap.P), c.Cap.Window[0], c.Cap.Window[1])
	}
	if c.SteerOn {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("steer %+.2f @%d", c.SteerCoeff, c.SteerLayer)
	}
	if s != "" && c.GeneratedOnly {
		s += " (on generated tokens)"
	}
	return s
}

// Info describes the loaded model for a status line.
type Info struct {
	Model, Device, DType string
	Layers, DModel       int
	Window               int       // the positions the model has (prompt and reply together); 0: unknown
	Axis                 string    // "" when there is none
	AxisRelation         string    // "axis of the base model" when the axis was made on the weights this model was fine-tuned from
	Percentiles          []float64 // cap percentiles the calibration offers
	Recording            string    // the session file, "" when not recording
	BestCap              string    // the capping setting `keel eval capping` found best ("layers_A:B-pP"), if known
	AxisModel            string    // the model the axis names in its header
}

// Token is one generated token as a front end shows it.
type Token struct {
	Text    string
	Proj    float64 // projection on the unit axis at the plotted layer
	HasProj bool
	Capped  bool // a cap moved the residual stream at this token
	// Special is a special token (end of turn, a template marker): drawn and named apart, never in a mean.
	Special bool
}

// Turn is one message of the conversation with, for generated ones, every token.
type Turn struct {
	Role    string
	Text    string
	Tokens  []Token
	Stopped bool // the user stopped the reply before its end
	// Dropped is a turn the opt-in context policy let go to keep the conversation in the model's window: shown,
	// no longer read by the model.
	Dropped bool
}

// Backend is what a session chats with: a loaded model with its axis and recording (NewLMBackend), or a test's
// scripted fake.
type Backend interface {
	Info() Info
	// Apply makes the controls the interventions in force; a generation in flight uses them from its next token.
	// Controls it refuses change nothing.
	Apply(c Controls) error
	// Tau is the cap floor on the +axis projection at a layer under the controls (NaN: none).
	Tau(c Controls, layer int) float64
	// Scale is the drift line at a layer (midway between the roles' and the default Assistant's mean
	// projections) and the Assistant's mean projection; NaN when unknown.
	Scale(layer int) (threshold, assistant float64)
	// Generate answers the chat, calling emit for every token; it returns the reply when done or ctx ends.
	Generate(ctx context.Context, msgs []tokenizer.Message, s Sampling, emit func(Token)) (string, error)
	// Context is the positions the conversation takes as the model reads it (its prompt) and the model's window
	// (0: unknown, no bound).
	Context(msgs []tokenizer.Message) (used, window int, err error)
	Recorder
	Close() error
}

// GPUMemory is what a backend on a CUDA device reports for the status line: bytes its tensors hold and bytes the
// caching allocator has reserved (ok false off CUDA).
type GPUMemory interface {
	GPUMemory() (allocated, reserved int64, ok bool)
}

// Recorder puts what happens in a chat besides generated tokens into its recording.
type Recorder interface {
	// Say records a turn given as text (the user's, or a system prompt).
	Say(role, text string) error
	// Control records a setting in force from here on (sampling, the terminal's size, a clear).
	Control(name string, value any) error
	// Mark labels the current turn.
	// Mark labels the current turn and returns its number in the recording.
	Mark(label string) (turn int, err error)
	// RecordJob records a job's change of state.
	RecordJob(u JobUpdate) error
}
