package workbench

import (
	"context"
	"fmt"
	"math"
	"os"
	"sync"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/steer"
)

// LMBackend is the Backend over a loaded model, an optional axis folder, and a session recording.
type LMBackend struct {
	lm     *model.LM
	info   Info
	axis   *probes.AxisFolder // nil without an axis
	rec    *Recording
	mu     sync.Mutex
	active []model.Intervention
	layer  int
	gen    Generator
	shared bool // the model is others' too: Close leaves it loaded
}

// Generator runs an assistant turn: the context ids under the live hooks' interventions, each token's text and
// step handed to onText as it comes; it returns the turn's text. A backend's own model generates the turn alone
// (NewLMBackend); a served model generates it as one row of the batch its clients share.
type Generator func(ctx context.Context, contextIDs []int, hooks *model.Hooks, s Sampling, onText func(text string, st model.Step) error) (string, error)

// Alone is the Generator of a model that serves one chat.
func Alone(lm *model.LM) Generator {
	return func(ctx context.Context, ids []int, hooks *model.Hooks, s Sampling, onText func(string, model.Step) error) (string, error) {
		g := model.GenerateConfig{MaxTokens: s.MaxTokens, Sampling: s.Model(), Hooks: hooks}
		res, err := lm.GenerateText(ctx, [][]int{ids}, model.TextConfig{GenerateConfig: g, OnText: onText})
		// The prompt's prefill is the turn's peak; give what it freed back, so a long chat does not hold its peak.
		lm.RT.TrimHostMemory()
		if len(res) == 0 {
			return "", err
		}
		return res[0].Text, err
	}
}

// LMConfig is what NewLMBackend needs besides the model.
type LMConfig struct {
	Device, DType string
	AxisPath      string // an extraction folder (axis, default vector, calibration), or a lone axis file
	IgnoreHash    bool   // accept an axis made for other weights of the same shape
	Record        bool
	RecordPath    string // "" with Record: a new file in the sessions folder
	Version       string
	// What the recording's header says the chat starts with.
	Sampling Sampling
	System   string
	Term     sessions.Term
}

// NewLMBackend prepares a loaded model for a session; it owns lm from here on (Close frees it).
func NewLMBackend(lm *model.LM, cfg LMConfig) (*LMBackend, error) {
	var axis *probes.AxisFolder
	relation := ""
	if cfg.AxisPath != "" {
		f, rel, err := probes.OpenAxisFolderFor(cfg.AxisPath, lm, cfg.IgnoreHash)
		if err != nil {
			return nil, err
		}
		axis, relation = f, rel.String()
	}
	b, err := newBackend(lm, axis, cfg, Alone(lm))
	if err != nil {
		return nil, err
	}
	b.info.AxisRelation = relation
	return b, nil
}

// NewSharedBackend is a session on a model that other sessions use at the same time, with the axis folder they
// share (nil: none): its turns go through gen, and Close leaves the model loaded.
func NewSharedBackend(lm *model.LM, axis *probes.AxisFolder, cfg LMConfig, gen Generator) (*LMBackend, error) {
	b, err := newBackend(lm, axis, cfg, gen)
	if err != nil {
		return nil, err
	}
	b.shared = true
	return b, nil
}

func newBackend(lm *model.LM, axis *probes.AxisFolder, cfg LMConfig, gen Generator) (*LMBackend, error) {
	b := &LMBackend{lm: lm, gen: gen, axis: axis, info: Info{Model: lm.Dir, Device: cfg.Device, DType: cfg.DType, Layers: lm.NumLayers(), DModel: lm.HiddenSize(), Window: lm.Window()}}
	if axis != nil {
		b.info.Axis, b.info.AxisModel = axis.AxisPath, axis.Axis.Model
		b.info.Percentiles = axis.Percentiles()
		if axis.Capping != nil {
			b.info.BestCap = axis.Capping.Best.ID
		}
	}
	eos := map[int]bool{}
	for _, id := range lm.EOS() {
		eos[id] = true
	}
	b.rec = &Recording{Special: func(id int) bool { return eos[id] || tokenizer.IsSpecial(lm.Tokenizer, id) }}
	if b.axis != nil {
		b.rec.Axis, b.rec.Layers = b.axis.Axis.Layers, b.axis.Axis.LayerList()
	}
	if cfg.Record {
		path := cfg.RecordPath
		if path == "" {
			path = sessions.NewPath(sessions.DefaultDir())
		}
		h := sessions.Header{Keel: cfg.Version, Model: lm.Dir, NLayers: lm.NumLayers(), Term: cfg.Term, Seed: cfg.Sampling.Seed,
			Sampling: cfg.Sampling.Model()}
		var err error
		if h.ModelFingerprint, h.ModelSHA256, err = weightsIdentity(lm.Dir); err != nil {
			return nil, err
		}
		if b.axis != nil {
			h.Axis, h.Layers = b.info.Axis, b.axis.Axis.LayerList()
			h.AxisSHA256, _ = steer.FileSHA256(b.info.Axis)
		}
		r, err := sessions.Create(path, h)
		if err != nil {
			return nil, err
		}
		b.rec.Rec, b.info.Recording = r, path
		if err := b.rec.Control("max_tokens", cfg.Sampling.MaxTokens); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// hashWholeUpTo is the largest set of weights a recording hashes whole at start (a second or two); larger ones
// are named by their fingerprint alone, so a 70B checkpoint does not hold up the first frame.
const hashWholeUpTo = 2 << 30

// weightsIdentity is what a recording names its weights by: the fingerprint always, the sha256 of the files
// when they are small enough to read at start.
func weightsIdentity(dir string) (fingerprint, sha string, err error) {
	if fingerprint, err = steer.WeightsFingerprint(dir); err != nil {
		return "", "", err
	}
	var size int64
	files, err := steer.WeightFiles(dir)
	if err != nil {
		return "", "", err
	}
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			size += st.Size()
		}
	}
	if size > hashWholeUpTo {
		return fingerprint, "", nil
	}
	sha, err = steer.WeightsSHA256(dir)
	return fingerprint, sha, err
}

// GPUMemory implements GPUMemory for a model on CUDA devices: the sums over the GPUs it is placed on.
func (b *LMBackend) GPUMemory() (allocated, reserved int64, ok bool) {
	for _, dev := range b.lm.Devices() {
		if !dev.CUDA {
			continue
		}
		alloc, _, res, err := b.lm.RT.CUDAMemory(dev.Index)
		if err != nil {
			return 0, 0, false
		}
		allocated, reserved, ok = allocated+alloc, reserved+res, true
	}
	return allocated, reserved, ok
}

// Info implements Backend.
func (b *LMBackend) Info() Info { return b.info }

// Tau implements Backend.
func (b *LMBackend) Tau(c Controls, layer int) float64 {
	if !c.CapOn || b.axis == nil {
		return math.NaN()
	}
	return b.axis.Tau(c.Cap, layer)
}

// Scale implements Backend.
func (b *LMBackend) Scale(layer int) (float64, float64) {
	if b.axis != nil {
		if line, top, ok := b.axis.Scale(layer); ok {
			return line, top
		}
	}
	return math.NaN(), math.NaN()
}

// Apply implements Backend.
func (b *LMBackend) Apply(c Controls) error {
	if c.Layer < 0 || c.Layer >= b.info.Layers {
		return fmt.Errorf("layer %d: the model has layers 0 to %d", c.Layer, b.info.Layers-1)
	}
	list, err := Interventions(b.axis, c)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.active, b.layer = list, c.Layer
	b.mu.Unlock()
	return b.rec.Retarget(list)
}

// Interventions are what the controls ask of the model, over an axis folder (nil: none loaded): steering first,
// so that a cap then bounds the steered stream as it would any other push away from the Assistant, then the cap
// rule's floors. The workbench's controls and the server's per-request "keel" settings both come here.
func Interventions(axis *probes.AxisFolder, c Controls) ([]model.Intervention, error) {
	if (c.CapOn || c.SteerOn) && axis == nil {
		return nil, fmt.Errorf("no axis loaded: start with --axis DIR or use /axis DIR")
	}
	var list []model.Intervention
	if c.SteerOn {
		iv, err := axis.Axis.Steer(c.SteerLayer, c.SteerCoeff)
		if err != nil {
			return nil, err
		}
		list = append(list, iv)
	}
	if c.CapOn {
		caps, err := axis.Caps(c.Cap)
		if err != nil {
			return nil, err
		}
		list = append(list, caps...)
	}
	for i := range list {
		list[i].GeneratedOnly = c.GeneratedOnly
	}
	return list, nil
}

// Generate implements Backend: the assistant turn is recorded token by token with its projections.
func (b *LMBackend) Generate(ctx context.Context, msgs []tokenizer.Message, s Sampling, emit func(Token)) (string, error) {
	ids, err := tokenizer.ChatPrompt(b.lm.Tokenizer, msgs)
	if err != nil {
		return "", err
	}
	b.mu.Lock()
	active, layer := b.active, b.layer
	b.mu.Unlock()
	if w := b.lm.Window(); w > 0 {
		if len(ids) >= w {
			return "", &ContextFullError{Used: len(ids), Window: w}
		}
		s.MaxTokens = min(s.MaxTokens, w-len(ids)) // the reply stops at the window, never past it
	}
	onToken := func(ev sessions.Event) { emit(tokenOf(ev, b.rec.Layers, layer)) }
	return b.rec.Generate(ctx, b.gen, ids, active, s, onToken)
}

// Context implements Backend.
func (b *LMBackend) Context(msgs []tokenizer.Message) (int, int, error) {
	ids, err := tokenizer.ChatPrompt(b.lm.Tokenizer, msgs)
	if err != nil {
		return 0, 0, err
	}
	return len(ids), b.lm.Window(), nil
}

// tokenOf is a recorded token as a front end shows it: its projection at the plotted layer (of the recorded
// layers) and whether a cap moved it.
func tokenOf(e sessions.Event, recorded []int, plotted int) Token {
	t := Token{Text: e.Piece, Special: e.Special}
	if e.Special { // named apart: no projection in any plot or mean
		return t
	}
	for _, c := range e.Caps {
		t.Capped = t.Capped || c != 0
	}
	for i, l := range recorded {
		if l == plotted && i < len(e.Proj) {
			t.Proj, t.HasProj = float64(e.Proj[i]), true
		}
	}
	return t
}

// Say implements Recorder.
func (b *LMBackend) Say(role, text string) error { return b.rec.Say(role, text) }

// Control implements Recorder.
func (b *LMBackend) Control(name string, value any) error { return b.rec.Control(name, value) }

// Mark implements Recorder.
func (b *LMBackend) Mark(label string) (int, error) { return b.rec.Mark(label) }

// RecordJob implements Recorder.
func (b *LMBackend) RecordJob(u JobUpdate) error {
	return b.rec.Job(u.ID, u.State, sessions.JobState{Kind: u.Kind, Step: u.Step, Total: u.Total, Loss: u.Loss, Final: u.Final, Error: u.Error})
}

// Close implements Backend: it ends the recording and frees the model (unless others share it).
func (b *LMBackend) Close() error {
	var err error
	if b.rec.Rec != nil {
		err = b.rec.Rec.Close()
	}
	if !b.shared {
		b.lm.Close()
	}
	return err
}
