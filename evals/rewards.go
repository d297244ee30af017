package evals

import (
	"context"
	"fmt"
	"math"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
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

// RewardSource is what a --reward spec may draw on beyond the samples themselves.
type RewardSource struct {
	ModelDir   string         // the model the axis reward reads activations of (the policy's reference)
	AxisDir    string         // the axis folder of the axis reward (default: the model's own axis/)
	IgnoreHash bool           // accept an axis made for other weights of the same shape
	RT         *torch.Runtime // loads the model and rm:DIR reward models
	Device     torch.Device   // where they are loaded
}

// ResolveReward is the one reading of a --reward spec: terms "[WEIGHT*]NAME[:ARG]" joined by "+", NAME one of
// exact, style:ROLE, axis (rewards of this package), rm:DIR (a reward model, train.LoadRewardModel) or
// cmd:PROGRAM (train.CommandReward). The model is loaded only when a term needs it; release frees what was
// loaded once the run is over. A spec's mistakes are UsageErrors of the caller's to print: they name the term.
func ResolveReward(spec string, src RewardSource) (r train.Reward, release func(), err error) {
	personas, err := probes.LoadPersonas()
	if err != nil {
		return nil, nil, err
	}
	var loaded []interface{ Close() }
	release = func() {
		for _, c := range loaded {
			c.Close()
		}
	}
	var lm *model.LM
	axis := func() (train.Reward, error) {
		if lm == nil {
			if lm, err = model.Load(src.RT, src.ModelDir, model.Options{Device: src.Device}); err != nil {
				return nil, err
			}
			loaded = append(loaded, lm)
		}
		return AxisReward(lm, src.AxisDir, src.IgnoreHash)
	}
	names := Rewards(probes.NewScorer(personas), axis)
	names["rm"] = func(dir string) (train.Reward, error) {
		if dir == "" {
			return nil, fmt.Errorf("rm takes a folder: rm:DIR, a *ForSequenceClassification reward model")
		}
		rm, err := train.LoadRewardModel(src.RT, dir, model.Options{Device: src.Device})
		if err != nil {
			return nil, err
		}
		loaded = append(loaded, rm)
		return rm, nil
	}
	if r, err = train.ParseReward(spec, names); err != nil {
		release()
		return nil, nil, err
	}
	return r, release, nil
}
