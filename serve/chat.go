package serve

import (
	"context"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/workbench"
)

// Generator runs a workbench chat's turns as rows of the scheduler's batch: the turn's interventions are the
// chat's live hooks, so a control changed mid-reply acts from the row's next step, as it does on a model of the
// chat's own. Its rows are owner's (see Request.Owner; "" for none).
func (s *Scheduler) Generator(owner string) workbench.Generator {
	return func(ctx context.Context, ids []int, hooks *model.Hooks, smp workbench.Sampling, onText func(string, model.Step) error) (string, error) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel() // a failed onText leaves the row at its next step
		tokens, err := s.Submit(ctx, Request{Prompt: ids, MaxTokens: smp.MaxTokens, Hooks: hooks, Owner: owner,
			Sampling: smp.Model()})
		if err != nil {
			return "", err
		}
		var text strings.Builder
		index := 0
		for t := range tokens {
			switch {
			case t.Done && t.Reason == "cancelled":
				if err := ctx.Err(); err != nil {
					return text.String(), err
				}
				return text.String(), ErrClosed
			case t.Done:
				return text.String(), t.Err
			case t.Flushed:
				text.WriteString(t.Text)
				continue
			}
			text.WriteString(t.Text)
			if err := onText(t.Text, model.Step{Index: index, ID: t.ID, Records: t.Records, Version: t.Version}); err != nil {
				return text.String(), err
			}
			index++
		}
		return text.String(), nil
	}
}
