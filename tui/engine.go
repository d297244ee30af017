package tui

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/steer"
)

// Message is one chat message.
type Message struct{ Role, Content string }

// Sampling is the generation settings the user can change with /set.
type Sampling struct {
	Temperature float64
	TopP        float64
	MaxTokens   int
	Seed        uint64
}

// Controls are the live interventions and the analysis layer.
type Controls struct {
	CapOn      bool
	Percentile string // a role-ward percentile name: p1, p25, p50, p75
	Window     [2]int // capped layers, a Python slice
	SteerOn    bool
	SteerCoeff float64 // c: coeff = c x the layer's average residual norm
	SteerLayer int
	Layer      int // the plotted layer
}

// Info describes the loaded model for the status line.
type Info struct {
	Model, Device, DType string
	Layers, DModel       int
	Axis                 string   // "" when there is none
	AxisRelation         string   // "axis of the base model" when the axis was made on the weights this model was fine-tuned from
	Percentiles          []string // cap percentiles the calibration offers
	Recording            string   // the session file, "" when not recording
	BestCap              string   // the capping config `keel eval capping` found best ("layers_A:B-pP"), if known
}

// Token is one generated token as the chat pane shows it.
type Token struct {
	Text    string
	Proj    float64 // projection on the unit axis at the analysis layer
	HasProj bool
	Capped  bool // a cap moved the residual stream at this token
}

// Engine is what the TUI chats with: NewLMEngine wraps a loaded model; the tests drive a fake.
type Engine interface {
	Info() Info
	// Apply makes the controls the interventions in force; a generation in flight uses them from its next token.
	Apply(c Controls) error
	// Tau is the cap floor on the +axis projection at a layer under the controls (NaN: none).
	Tau(c Controls, layer int) float64
	// Scale is the drift line at a layer (midway between the roles' and the default Assistant's mean
	// projections) and the Assistant's mean projection; NaN when unknown.
	Scale(layer int) (threshold, assistant float64)
	// Generate answers the chat, calling emit for every token; it returns the reply when done or ctx ends.
	Generate(ctx context.Context, msgs []Message, s Sampling, emit func(Token)) (string, error)
	// Mark labels the current turn in the recording.
	Mark(label string) error
	// RecordJob records a job's change of state in the recording.
	RecordJob(u JobUpdate) error
	Close() error
}

// LMEngine is the Engine over a loaded model, an optional axis with its calibration, and a session recording.
type LMEngine struct {
	lm     *model.LM
	info   Info
	axis   *steer.Axis
	taus   []map[string]float64 // per layer: role-ward percentile -> value (tau is its negation)
	scale  map[int][2]float64   // per layer: drift line and the Assistant's mean projection
	rec    *sessions.Recording
	mu     sync.Mutex
	active []model.Intervention
	layer  int
}

// EngineConfig is what NewLMEngine needs besides the model.
type EngineConfig struct {
	Device, DType string
	AxisPath      string // an axis file, or an extraction folder holding axis.safetensors and calibration.json
	IgnoreHash    bool
	RecordPath    string // "" with Record: a new file in the sessions folder
	Record        bool
	Version       string
}

// NewLMEngine prepares a loaded model for the TUI.
func NewLMEngine(lm *model.LM, cfg EngineConfig) (*LMEngine, error) {
	e := &LMEngine{lm: lm, info: Info{Model: lm.Dir, Device: cfg.Device, DType: cfg.DType, Layers: lm.NumLayers(), DModel: lm.HiddenSize()}}
	if cfg.AxisPath != "" {
		path, calPath := cfg.AxisPath, ""
		if st, err := os.Stat(path); err == nil && st.IsDir() {
			path, calPath = filepath.Join(cfg.AxisPath, "axis.safetensors"), filepath.Join(cfg.AxisPath, "calibration.json")
		}
		a, err := steer.LoadAxis(path)
		if err != nil {
			return nil, err
		}
		w, err := steer.IdentifyWeights(lm.Dir)
		if err != nil {
			return nil, err
		}
		rel, err := a.Fit(path, lm.NumLayers(), lm.HiddenSize(), w, cfg.IgnoreHash)
		if err != nil {
			return nil, err
		}
		e.axis, e.info.Axis, e.info.AxisRelation = a, path, rel.String()
		e.scale = map[int][2]float64{}
		if def, err := steer.LoadAxis(filepath.Join(filepath.Dir(path), "default_vector.safetensors")); err == nil {
			for l := range a.Layers {
				if line, top, ok := a.Scale(def, l); ok {
					e.scale[l] = [2]float64{line, top}
				}
			}
		}
		if calPath != "" {
			if raw, err := os.ReadFile(filepath.Join(cfg.AxisPath, "capping.json")); err == nil {
				var capping probes.CapEvalReport
				if json.Unmarshal(raw, &capping) == nil {
					e.info.BestCap = capping.Best.ID
				}
			}
			if raw, err := os.ReadFile(calPath); err == nil {
				var cal probes.Calibration
				if err := json.Unmarshal(raw, &cal); err != nil || len(cal.RoleWard) != lm.NumLayers() {
					return nil, fmt.Errorf("%s: not a calibration of this model's %d layers: rerun keel axis calibrate", calPath, lm.NumLayers())
				}
				e.taus = cal.RoleWard
				for p := range cal.RoleWard[0] {
					e.info.Percentiles = append(e.info.Percentiles, p)
				}
				sort.Slice(e.info.Percentiles, func(i, j int) bool { return pctValue(e.info.Percentiles[i]) < pctValue(e.info.Percentiles[j]) })
			}
		}
	}
	e.rec = &sessions.Recording{}
	if e.axis != nil {
		e.rec.Axis = e.axis.Layers
		e.rec.Layers = e.axis.LayerList()
	}
	if cfg.Record {
		path := cfg.RecordPath
		if path == "" {
			path = sessions.NewPath(sessions.DefaultDir())
		}
		h := sessions.Header{Keel: cfg.Version, Model: lm.Dir, Term: sessions.Term{Cols: 80, Rows: 24}}
		if e.axis != nil {
			h.Axis, h.Layers = e.info.Axis, e.axis.LayerList()
			h.AxisSHA256, _ = steer.FileSHA256(e.info.Axis)
		}
		r, err := sessions.Create(path, h)
		if err != nil {
			return nil, err
		}
		e.rec.Rec, e.info.Recording = r, path
	}
	return e, nil
}

func pctValue(name string) float64 {
	var v float64
	fmt.Sscanf(name, "p%g", &v)
	return v
}

// Info implements Engine.
func (e *LMEngine) Info() Info { return e.info }

// Tau implements Engine.
func (e *LMEngine) Tau(c Controls, layer int) float64 {
	if !c.CapOn || e.taus == nil || layer < c.Window[0] || layer >= c.Window[1] || layer >= len(e.taus) {
		return math.NaN()
	}
	v, ok := e.taus[layer][c.Percentile]
	if !ok {
		return math.NaN()
	}
	return -v
}

// Scale implements Engine.
func (e *LMEngine) Scale(layer int) (float64, float64) {
	if s, ok := e.scale[layer]; ok {
		return s[0], s[1]
	}
	return math.NaN(), math.NaN()
}

// Apply implements Engine.
func (e *LMEngine) Apply(c Controls) error {
	var list []model.Intervention
	if c.CapOn || c.SteerOn {
		if e.axis == nil {
			return fmt.Errorf("no axis loaded: start with --axis DIR or use /axis DIR")
		}
	}
	// Steering first: a cap then bounds the steered stream, as it would any other push away from the Assistant.
	if c.SteerOn {
		iv, err := e.axis.Steer(c.SteerLayer, c.SteerCoeff)
		if err != nil {
			return err
		}
		list = append(list, iv)
	}
	if c.CapOn {
		if e.taus == nil {
			return fmt.Errorf("the axis has no calibration: run keel axis calibrate --dir on its extraction folder")
		}
		if _, ok := e.taus[0][c.Percentile]; !ok {
			return fmt.Errorf("no percentile %s in the calibration (it has %v)", c.Percentile, e.info.Percentiles)
		}
		if c.Window[0] < 0 || c.Window[1] > e.info.Layers || c.Window[0] >= c.Window[1] {
			return fmt.Errorf("layers %d:%d are not a window of the model's %d layers", c.Window[0], c.Window[1], e.info.Layers)
		}
		for l := c.Window[0]; l < c.Window[1]; l++ {
			list = append(list, model.Intervention{Layer: l, Kind: model.Cap, Vectors: [][]float32{e.axis.Layers[l]}, Tau: e.Tau(c, l), Label: "cap " + c.Percentile})
		}
	}
	if c.Layer < 0 || c.Layer >= e.info.Layers {
		return fmt.Errorf("layer %d: the model has layers 0 to %d", c.Layer, e.info.Layers-1)
	}
	e.mu.Lock()
	e.active, e.layer = list, c.Layer
	e.mu.Unlock()
	return e.rec.Retarget(list)
}

// Generate implements Engine.
func (e *LMEngine) Generate(ctx context.Context, msgs []Message, s Sampling, emit func(Token)) (string, error) {
	tm := make([]tokenizer.Message, len(msgs))
	for i, m := range msgs {
		tm[i] = tokenizer.Message{"role": m.Role, "content": m.Content}
	}
	if n := len(msgs); n > 0 && msgs[n-1].Role == "user" {
		if err := e.rec.Say("user", msgs[n-1].Content); err != nil {
			return "", err
		}
	}
	ids, err := tokenizer.ChatPrompt(e.lm.Tokenizer, tm)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	active, layer := e.active, e.layer
	e.mu.Unlock()
	at := -1 // the analysis layer's place among the recorded projections
	for i, l := range e.rec.Layers {
		if l == layer {
			at = i
		}
	}
	e.rec.OnToken = func(ev sessions.Event) {
		t := Token{Text: ev.Piece}
		for _, c := range ev.Caps {
			t.Capped = t.Capped || c != 0
		}
		if at >= 0 && at < len(ev.Proj) {
			t.Proj, t.HasProj = float64(ev.Proj[at]), true
		}
		emit(t)
	}
	g := model.GenerateConfig{MaxTokens: s.MaxTokens, Sampling: model.Sampling{Temperature: s.Temperature, TopP: s.TopP, Seed: s.Seed}}
	reply, _, err := e.rec.Generate(ctx, e.lm, ids, active, g, nil)
	return reply, err
}

// Mark implements Engine.
func (e *LMEngine) Mark(label string) error { return e.rec.Mark(label) }

// RecordJob implements Engine.
func (e *LMEngine) RecordJob(u JobUpdate) error {
	return e.rec.Job(u.ID, u.State, sessions.JobState{Kind: u.Kind, Step: u.Step, Total: u.Total, Loss: u.Loss, Final: u.Final, Error: u.Error})
}

// Close implements Engine: it ends the recording and frees the model.
func (e *LMEngine) Close() error {
	var err error
	if e.rec.Rec != nil {
		err = e.rec.Rec.Close()
	}
	e.lm.Close()
	return err
}
