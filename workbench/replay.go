package workbench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"

	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/sessions"
)

// replayBackend answers a session from its recording: each reply is the next recorded assistant turn, token by
// token with its projections, and the plot's lines are the recorded ones.
type replayBackend struct {
	info   Info
	layers []int          // the recorded layers, in the order of a token's projections
	scale  ControlsRecord // the recorded lines at the plotted layer
	// reply streams the next recorded assistant turn: its tokens, and the events recorded while it streamed.
	reply func(emit func(sessions.Event)) string
	stop  func() // stops the reply after its last token (a reply the user stopped)
}

func (r *replayBackend) Info() Info { return r.info }

func (r *replayBackend) Apply(c Controls) error {
	if c.Layer < 0 || c.Layer >= r.info.Layers {
		return fmt.Errorf("layer %d: the recording has layers 0 to %d", c.Layer, r.info.Layers-1)
	}
	return nil
}

func orNaN(v *float64) float64 {
	if v == nil {
		return math.NaN()
	}
	return *v
}

func (r *replayBackend) Tau(c Controls, layer int) float64 {
	if !c.CapOn || layer != r.scale.Controls.Layer {
		return math.NaN()
	}
	return orNaN(r.scale.Tau)
}

func (r *replayBackend) Scale(layer int) (float64, float64) {
	if layer != r.scale.Controls.Layer {
		return math.NaN(), math.NaN()
	}
	return orNaN(r.scale.DriftLine), orNaN(r.scale.Assistant)
}

func (r *replayBackend) Generate(ctx context.Context, msgs []tokenizer.Message, s Sampling, emit func(Token)) (string, error) {
	// The plotted layer is the one in force at each token (a replayed /layer moves it mid-reply too).
	text := r.reply(func(e sessions.Event) { emit(tokenOf(e, r.layers, r.scale.Controls.Layer)) })
	if r.stop != nil {
		r.stop()
		return text, ctx.Err()
	}
	return text, nil
}

// Context implements Backend: a recording's conversation is as long as it was; the window speaks through the
// recorded drops.
func (r *replayBackend) Context([]tokenizer.Message) (int, int, error) { return 0, 0, nil }

func (r *replayBackend) Say(role, text string) error          { return nil }
func (r *replayBackend) Control(name string, value any) error { return nil }
func (r *replayBackend) Mark(label string) (int, error)       { return 0, nil }
func (r *replayBackend) RecordJob(u JobUpdate) error          { return nil }
func (r *replayBackend) Close() error                         { return nil }

// ReplaySession rebuilds a recorded chat in a fresh Session, calling step after every event it applies and after
// every token of every reply, so that a front end can draw each frame as it drew it live.
func ReplaySession(rec *sessions.Session, step func(s *Session, e sessions.Event)) error {
	h := rec.Header
	layers := max(h.NLayers, 1)
	for _, l := range h.Layers {
		layers = max(layers, l+1)
	}
	b := &replayBackend{info: Info{Model: h.Model, Device: "recorded", Layers: layers, Axis: h.Axis}, layers: h.Layers}
	sampling := Sampling{Temperature: h.Sampling.Temperature, TopP: h.Sampling.TopP, TopK: h.Sampling.TopK, MinP: h.Sampling.MinP,
		RepetitionPenalty: h.Sampling.RepetitionPenalty, MaxTokens: 256, Seed: h.Seed}
	s := New(b, Options{Sampling: sampling, Controls: DefaultControls(layers)})
	ev := rec.Events
	for i := 0; i < len(ev); i++ {
		e := ev[i]
		switch e.Type {
		case sessions.TurnEnd:
			switch e.Role {
			case "system":
				s.setSystem(e.Text)
			case "user":
				// The reply is the next assistant turn, with what happened while it streamed; a stop recorded
				// right after it ends it as the user did.
				j := i + 1
				b.stop = nil
				b.reply = func(emit func(sessions.Event)) string {
					inReply := false
					for ; j < len(ev); j++ {
						f := ev[j]
						switch {
						case f.Type == sessions.TurnStart && f.Role == "assistant":
							inReply = true
						case f.Type == sessions.Token && inReply:
							emit(f)
						case f.Type == sessions.TurnEnd && f.Role == "assistant":
							if j+1 < len(ev) && ev[j+1].Type == sessions.Control && ev[j+1].Name == "stopped" {
								b.stop = s.Stop
							}
							return f.Text
						case f.Type == sessions.Control:
							replayControl(s, b, f)
							step(s, f)
						case f.Type == sessions.Marker || f.Type == sessions.Job:
							step(s, f)
						}
					}
					return ""
				}
				stream, err := s.Start(context.Background(), e.Text)
				if err != nil {
					return err
				}
				step(s, e)
				stream(func(Token) { step(s, ev[min(j, len(ev)-1)]) })
				i = min(j, len(ev)-1)
				step(s, ev[i]) // the reply is in
			}
		case sessions.Control:
			if err := replayControl(s, b, e); err != nil {
				return fmt.Errorf("event at %.3f s: %w", e.T, err)
			}
		}
		step(s, e)
	}
	return nil
}

// replayControl applies a recorded setting change to the replaying session.
func replayControl(s *Session, b *replayBackend, e sessions.Event) error {
	switch e.Name {
	case "clear":
		return s.clear()
	case "dropped_turns":
		var d struct{ Turns []int }
		if err := json.Unmarshal(e.Value, &d); err != nil {
			return fmt.Errorf("dropped_turns: %w", err)
		}
		s.mu.Lock()
		for _, i := range d.Turns {
			if i >= 0 && i < len(s.turns) {
				s.turns[i].Dropped = true
			}
		}
		s.mu.Unlock()
	case sessions.ControlsEvent:
		var r ControlsRecord
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return fmt.Errorf("controls: %w", err)
		}
		b.scale = r
		return s.Apply(r.Controls)
	case "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens", "seed":
		var v float64
		if err := json.Unmarshal(e.Value, &v); err != nil {
			return fmt.Errorf("%s: %w", e.Name, err)
		}
		s.mu.Lock()
		switch e.Name {
		case "temperature":
			s.sampling.Temperature = v
		case "top_p":
			s.sampling.TopP = v
		case "max_tokens":
			s.sampling.MaxTokens = int(v)
		case "top_k":
			s.sampling.TopK = int(v)
		case "min_p":
			s.sampling.MinP = v
		case "repetition_penalty":
			s.sampling.RepetitionPenalty = v
		case "seed":
			s.sampling.Seed = uint64(v)
		}
		s.mu.Unlock()
	}
	return nil
}
