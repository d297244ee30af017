package evals

import (
	"context"
	"fmt"
	"math"

	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// Rewards are the rewards of the persona domain a --reward spec may name: exact (checkable answers), style:ROLE
// (the style scorer) and axis (stay the Assistant; nil: the spec may not name it).
func Rewards(scorer *probes.Scorer, axis func() (train.Reward, error)) train.RewardNames {
	return train.RewardNames{
		"exact": func(string) (train.Reward, error) { return ExactReward{}, nil },
		"style": func(role string) (train.Reward, error) {
			if !scorer.Knows(role) {
				return nil, fmt.Errorf("unknown role %q (`keel corpus roles` lists them)", role)
			}
			return StyleReward{Role: role, Scorer: scorer}, nil
		},
		"axis": func(string) (train.Reward, error) {
			if axis == nil {
				return nil, fmt.Errorf("give --axis DIR (an extraction folder)")
			}
			return axis()
		},
	}
}

// ExactReward is 1 when the response states the sample's exact answer (probes' rule: the one new number, or the
// name), else 0.
type ExactReward struct{}

// Name implements train.Reward.
func (ExactReward) Name() string { return "exact" }

// Score implements train.Reward.
func (ExactReward) Score(_ context.Context, samples []train.Sample) ([]float64, error) {
	out := make([]float64, len(samples))
	for i, s := range samples {
		if s.Answer == "" {
			return nil, fmt.Errorf("sample %d has no \"answer\": the exact reward needs checkable tasks", i)
		}
		// The question's own numbers may be restated; it is the last user message of the prompt.
		q := probes.Question{Answer: s.Answer}
		for _, m := range s.Messages {
			if m.Role == "user" {
				q.Text = m.Content
			}
		}
		if q.Correct(s.Response) {
			out[i] = 1
		}
	}
	return out, nil
}

// StyleReward is the style scorer's score of the response for one role (or the Assistant), in [0, 1].
type StyleReward struct {
	Role   string
	Scorer *probes.Scorer
}

// Name implements train.Reward.
func (r StyleReward) Name() string { return "style:" + r.Role }

// Score implements train.Reward.
func (r StyleReward) Score(_ context.Context, samples []train.Sample) ([]float64, error) {
	out := make([]float64, len(samples))
	for i, s := range samples {
		out[i] = math.Min(1, r.Scorer.Of(s.Response, r.Role).Score)
	}
	return out, nil
}
