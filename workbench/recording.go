package workbench

import (
	"context"
	"encoding/json"
	"slices"
	"sync"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/sessions"
)

// Recording drives a chat's record: the file (none when Rec is nil: --no-record still shows projections) and
// the axis whose projections every generated token carries.
type Recording struct {
	Rec    *sessions.Recorder
	Axis   map[int][]float32 // layer -> unit vector, for the recorded layers
	Layers []int             // the recorded layers when Rec is nil (else the header's)
	// Special reports the model's special tokens (end of turn, template markers), which are recorded as such.
	Special func(id int) bool
	live    *model.Hooks
	// The interventions lists of the turn in flight, numbered as the file numbers them (0: the turn start's, then
	// each "interventions" control in order), by the hooks version that put them in force: each token records the
	// number of the list that made it. vmu orders a change's version, number and control event.
	vmu      sync.Mutex
	versions map[uint64]int
	lists    int
	inTurn   bool
	mu       sync.Mutex // events come from the generating goroutine and from the UI's (Retarget, Mark)
}

func (r *Recording) layers() []int {
	if r.Rec != nil {
		return r.Rec.Header().Layers
	}
	return r.Layers
}

func (r *Recording) add(e sessions.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Rec != nil {
		if err := r.Rec.Add(e); err != nil {
			return err
		}
	}
	return nil
}

// Say records a turn given as text (the user's, or a system prompt).
func (r *Recording) Say(role, text string) error {
	if err := r.add(sessions.Event{Type: sessions.TurnStart, Role: role}); err != nil {
		return err
	}
	if err := r.add(sessions.Event{Type: sessions.Token, Piece: text}); err != nil {
		return err
	}
	return r.add(sessions.Event{Type: sessions.TurnEnd, Role: role, Text: text})
}

// sessions.Control records a setting change (sampling, capping, steering) in force from here on.
func (r *Recording) Control(name string, value any) error {
	raw, err := json.Marshal(value)
	if err != nil {
		return err
	}
	return r.add(sessions.Event{Type: sessions.Control, Name: name, Value: raw})
}

// sessions.Job records a training job's change of state (started, paused, done, failed, cancelled) seen during the chat.
func (r *Recording) Job(id, state string, js sessions.JobState) error {
	raw, err := json.Marshal(js)
	if err != nil {
		return err
	}
	return r.add(sessions.Event{Type: sessions.Job, Name: id, Label: state, Value: raw})
}

// Mark records a label (good, bad, or a bookmark) on the current turn.
// Mark labels the current turn; it returns the turn's number in the recording.
func (r *Recording) Mark(label string) (int, error) {
	if err := r.add(sessions.Event{Type: sessions.Marker, Label: label}); err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Rec == nil {
		return 0, nil
	}
	return r.Rec.Turn(), nil
}

// withCaptures is the interventions followed by a capture of the axis at each recorded layer, so recorded
// projections see the stream as the interventions left it.
func (r *Recording) withCaptures(interventions []model.Intervention) []model.Intervention {
	list := append([]model.Intervention(nil), interventions...)
	for _, l := range r.layers() {
		if v, ok := r.Axis[l]; ok {
			list = append(list, model.Intervention{Layer: l, Kind: model.Capture, Vectors: [][]float32{v}, Label: "axis"})
		}
	}
	return list
}

func (r *Recording) hooks() *model.Hooks {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live == nil {
		r.live = model.NewHooks()
	}
	return r.live
}

// Retarget replaces the interventions of the turn in flight (and of the next turns' start): generation uses the
// new list from its next token. The change is recorded as a control event.
func (r *Recording) Retarget(interventions []model.Intervention) error {
	r.vmu.Lock()
	defer r.vmu.Unlock()
	h := r.hooks()
	h.Set(r.withCaptures(interventions))
	if r.inTurn {
		_, v := h.Snapshot()
		r.lists++
		r.versions[v] = r.lists
	}
	return r.Control("interventions", interventions)
}

// listOf is the number, within the turn, of the interventions list a hooks version put in force (-1: unknown).
func (r *Recording) listOf(version uint64) int {
	r.vmu.Lock()
	defer r.vmu.Unlock()
	if n, ok := r.versions[version]; ok {
		return n
	}
	return -1
}

// Generate runs an assistant turn on the context ids through gen as a recorded turn: every token with its
// projections and cap movements (each also handed to onToken as it is recorded), the text at the end, under the
// given interventions; Retarget changes them while it runs (the workbench's live controls).
func (r *Recording) Generate(ctx context.Context, gen Generator, contextIDs []int, interventions []model.Intervention, s Sampling, onToken func(sessions.Event)) (string, error) {
	if err := r.add(sessions.Event{Type: sessions.TurnStart, Role: "assistant", Context: contextIDs, Interventions: interventions}); err != nil {
		return "", err
	}
	hooks := r.hooks()
	r.vmu.Lock()
	hooks.Set(r.withCaptures(interventions))
	_, v := hooks.Snapshot()
	r.versions, r.lists, r.inTurn = map[uint64]int{v: 0}, 0, true
	r.vmu.Unlock()
	defer func() {
		r.vmu.Lock()
		r.inTurn = false
		r.vmu.Unlock()
	}()
	layers := r.layers()
	var recErr error
	text, err := gen(ctx, contextIDs, hooks, s, func(piece string, st model.Step) error {
		e := sessions.Event{Type: sessions.Token, ID: st.ID, Piece: piece, Special: r.Special != nil && r.Special(st.ID), Iv: r.listOf(st.Version)}
		e.Proj, e.Caps = tokenNumbers(st.Records, layers)
		if err := r.add(e); err != nil {
			recErr = err
			return err
		}
		if onToken != nil {
			onToken(e)
		}
		return nil
	})
	if recErr != nil {
		return "", recErr
	}
	if endErr := r.add(sessions.Event{Type: sessions.TurnEnd, Role: "assistant", Text: text}); endErr != nil && err == nil {
		err = endErr
	}
	return text, err
}

// tokenNumbers are what a token's records give the recording: its projection at each recorded layer (in their
// order) and each cap's move (in the interventions' order). Recording and verifying read records the same way.
func tokenNumbers(records []model.Record, layers []int) (proj, caps []float32) {
	proj = make([]float32, len(layers))
	for _, rec := range records {
		switch rec.Kind {
		case model.Capture:
			if i := slices.Index(layers, rec.Layer); i >= 0 {
				proj[i] = rec.Values[0]
			}
		case model.Cap:
			caps = append(caps, rec.Values[0])
		}
	}
	return proj, caps
}
