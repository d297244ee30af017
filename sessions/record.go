package sessions

import (
	"context"
	"encoding/json"

	"github.com/keel-lab/keel/engine/model"
)

// Recording drives a chat's record: the file, the screen it renders (for live display and replay), and the
// axis whose projections every generated token carries.
type Recording struct {
	Rec    *Recorder
	Screen *Screen
	Axis   map[int][]float32 // layer -> unit vector, for Header.Layers
	// OnFrame, when set, receives the frame after every event (what a terminal would show).
	OnFrame func(string)
}

func (r *Recording) add(e Event) error {
	if err := r.Rec.Add(e); err != nil {
		return err
	}
	if r.Screen != nil {
		r.Screen.Apply(e)
		if r.OnFrame != nil {
			r.OnFrame(r.Screen.View())
		}
	}
	return nil
}

// Say records a turn given as text (the user's, or a system prompt).
func (r *Recording) Say(role, text string) error {
	if err := r.add(Event{Type: TurnStart, Role: role}); err != nil {
		return err
	}
	if err := r.add(Event{Type: Token, Piece: text}); err != nil {
		return err
	}
	return r.add(Event{Type: TurnEnd, Role: role, Text: text})
}

// Control records a setting change (sampling, capping, steering) in force from here on.
func (r *Recording) Control(name string, value any) error {
	raw, err := json.Marshal(value)
	if err != nil {
		return err
	}
	return r.add(Event{Type: Control, Name: name, Value: raw})
}

// Mark records a label (good, bad, or a bookmark) on the current turn.
func (r *Recording) Mark(label string) error { return r.add(Event{Type: Marker, Label: label}) }

// hooks is the turn's interventions followed by a capture of the axis at each recorded layer, so recorded
// projections see the stream as the interventions left it.
func (r *Recording) hooks(interventions []model.Intervention) ([]model.Intervention, map[int]int) {
	list := append([]model.Intervention(nil), interventions...)
	captureAt := map[int]int{} // intervention index -> position in Header.Layers
	for i, l := range r.Rec.header.Layers {
		v, ok := r.Axis[l]
		if !ok {
			continue
		}
		captureAt[len(list)] = i
		list = append(list, model.Intervention{Layer: l, Kind: model.Capture, Vectors: [][]float32{v}, Label: "axis"})
	}
	return list, captureAt
}

// Generate runs the model on the context ids as a recorded assistant turn: every token with its projections and
// cap movements, the text at the end. hooks is the live intervention list (the TUI may change it mid-turn).
func (r *Recording) Generate(ctx context.Context, lm *model.LM, contextIDs []int, interventions []model.Intervention, g model.GenerateConfig, onText func(string)) (string, []int, error) {
	list, captureAt := r.hooks(interventions)
	if err := r.add(Event{Type: TurnStart, Role: "assistant", Context: contextIDs, Interventions: interventions}); err != nil {
		return "", nil, err
	}
	g.Hooks = model.NewHooks(list...)
	var recErr error
	res, err := lm.GenerateText(ctx, [][]int{contextIDs}, model.TextConfig{GenerateConfig: g, OnText: func(text string, st model.Step) error {
		e := Event{Type: Token, ID: st.ID, Piece: text, Proj: make([]float32, len(r.Rec.header.Layers))}
		for _, rec := range st.Records {
			if pos, ok := captureAt[rec.Intervention]; ok {
				e.Proj[pos] = rec.Values[0]
			} else if rec.Kind == model.Cap {
				e.Caps = append(e.Caps, rec.Values[0])
			}
		}
		if err := r.add(e); err != nil {
			recErr = err
			return err
		}
		if onText != nil {
			onText(text)
		}
		return nil
	}})
	if recErr != nil {
		return "", nil, recErr
	}
	if len(res) == 0 {
		return "", nil, err
	}
	if endErr := r.add(Event{Type: TurnEnd, Role: "assistant", Text: res[0].Text}); endErr != nil && err == nil {
		err = endErr
	}
	return res[0].Text, res[0].IDs, err
}
