package workbench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/sessions"
)

// VerifyReport is what running a recording's tokens again found.
type VerifyReport struct {
	Turns, Tokens int
	Unknown       int     // tokens whose interventions list the file does not name (recorded before lists were numbered)
	MaxProj       float64 // the largest difference of a projection, recorded against recomputed
	MaxCap        float64 // the largest difference of a cap's move
	Mismatches    []string
}

// maxMismatches bounds the differences a report lists (the count is in the figures).
const maxMismatches = 20

// Verify runs every generated turn of a recording again on lm, teacher-forced through the generation path: the
// recorded context, then the recorded tokens one at a time, each under the interventions list that made it (the
// turn start's, or the one a control changed to mid-reply), with the axis's unit vectors at the recorded layers.
// Every recorded projection and cap move must come back within tol (absolute, or relative above 1).
func Verify(ctx context.Context, lm *model.LM, axis map[int][]float32, rec *sessions.Session, tol float64) (VerifyReport, error) {
	var rep VerifyReport
	r := &Recording{Axis: axis, Layers: rec.Header.Layers}
	ev := rec.Events
	for i := 0; i < len(ev); i++ {
		start := ev[i]
		if start.Type != sessions.TurnStart || start.Role != "assistant" || len(start.Context) == 0 {
			continue
		}
		lists := [][]model.Intervention{start.Interventions}
		var toks []sessions.Event
		for i++; i < len(ev) && !(ev[i].Type == sessions.TurnEnd && ev[i].Role == "assistant"); i++ {
			switch e := ev[i]; {
			case e.Type == sessions.Token:
				toks = append(toks, e)
			case e.Type == sessions.Control && e.Name == "interventions":
				var l []model.Intervention
				if err := json.Unmarshal(e.Value, &l); err != nil {
					return rep, fmt.Errorf("turn %d: an interventions event: %w", e.Turn, err)
				}
				lists = append(lists, l)
			}
		}
		if len(toks) == 0 {
			continue
		}
		listFor := func(k int) ([]model.Intervention, bool) {
			n := toks[k].Iv
			if n < 0 || n >= len(lists) {
				return nil, false
			}
			return r.withCaptures(lists[n]), true
		}
		first, ok := listFor(0)
		if !ok {
			rep.Unknown += len(toks)
			continue
		}
		hooks := model.NewHooks()
		hooks.Set(first)
		ids := make([]int, len(toks))
		for k, t := range toks {
			ids[k] = t.ID
		}
		rep.Turns++
		check := func(k int, records []model.Record) {
			t := toks[k]
			rep.Tokens++
			proj, caps := tokenNumbers(records, rec.Header.Layers)
			differs := func(what string, a, b float32, worst *float64) {
				d := math.Abs(float64(a - b))
				*worst = max(*worst, d)
				if d > tol*max(1, math.Abs(float64(a))) && len(rep.Mismatches) < maxMismatches {
					rep.Mismatches = append(rep.Mismatches, fmt.Sprintf("turn %d token %d (%q) %s: recorded %+.6f, now %+.6f", t.Turn, k, t.Piece, what, a, b))
				}
			}
			for j, l := range rec.Header.Layers {
				if j < len(t.Proj) {
					differs(fmt.Sprintf("layer %d projection", l), t.Proj[j], proj[j], &rep.MaxProj)
				}
			}
			if len(caps) != len(t.Caps) && len(rep.Mismatches) < maxMismatches {
				rep.Mismatches = append(rep.Mismatches, fmt.Sprintf("turn %d token %d: %d cap moves recorded, %d now", t.Turn, k, len(t.Caps), len(caps)))
			}
			for j := range min(len(caps), len(t.Caps)) {
				differs(fmt.Sprintf("cap %d move", j), t.Caps[j], caps[j], &rep.MaxCap)
			}
		}
		g := model.GenerateConfig{MaxTokens: len(ids), EOS: lm.EOS(), Hooks: hooks, Forced: [][]int{ids},
			OnStep: func(st model.Step) (bool, error) {
				check(st.Index, st.Records)
				if k := st.Index + 1; k < len(toks) { // the next token's list, in force from its pass
					if l, ok := listFor(k); ok {
						hooks.Set(l)
					} else {
						rep.Unknown += len(toks) - k
						return true, nil
					}
				}
				return false, nil
			}}
		if _, err := lm.Generate(ctx, [][]int{start.Context}, g); err != nil {
			return rep, fmt.Errorf("turn %d: %w", start.Turn, err)
		}
	}
	return rep, nil
}

// OK reports whether every recorded number came back.
func (r VerifyReport) OK() bool { return len(r.Mismatches) == 0 && r.Unknown == 0 }
