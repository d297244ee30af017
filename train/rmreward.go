package train

import (
	"context"
	"fmt"
	"math"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
)

// RewardModel is a learned reward model's judgement (--reward rm:DIR): sigmoid(r), where r is a
// *ForSequenceClassification checkpoint's first output at the last token of the conversation a sample makes
// (its prompt, then the response as the assistant's turn, rendered with the reward model's own chat template),
// as transformers' reward models are read. sigmoid(r) is the probability the Bradley-Terry model the reward
// model was trained as gives the reply over one it scores 0: in [0, 1] like keel's other rewards, so weighted
// sums mix on one scale and A-LoL's value head (bounded by max_value 1) can fit it. PPO's reward normalisation
// works on either scale.
type RewardModel struct {
	LM        *model.LM
	BatchSize int
}

// LoadRewardModel loads the reward model in dir.
func LoadRewardModel(rt *torch.Runtime, dir string, opts model.Options) (*RewardModel, error) {
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if !cfg.IsClassifier() {
		return nil, fmt.Errorf("%s is a %s: rm:DIR takes a reward model (a *ForSequenceClassification checkpoint with a score head)", dir, cfg.Architecture())
	}
	lm, err := model.Load(rt, dir, opts)
	if err != nil {
		return nil, err
	}
	return &RewardModel{LM: lm, BatchSize: 8}, nil
}

// Name implements Reward.
func (r *RewardModel) Name() string { return "rm:" + r.LM.Dir }

// Score implements Reward.
func (r *RewardModel) Score(ctx context.Context, samples []Sample) ([]float64, error) {
	out := make([]float64, 0, len(samples))
	for start := 0; start < len(samples); start += r.BatchSize {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var seqs [][]int
		for _, s := range samples[start:min(start+r.BatchSize, len(samples))] {
			msgs := append(append([]tokenizer.Message(nil), s.Messages...), tokenizer.Message{Role: "assistant", Content: s.Response})
			ids, err := tokenizer.ChatConversation(r.LM.Tokenizer, msgs)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", r.Name(), err)
			}
			seqs = append(seqs, ids)
		}
		scores, err := r.LM.Scores(seqs, r.BatchSize)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Name(), err)
		}
		for _, sc := range scores {
			out = append(out, 1/(1+math.Exp(-float64(sc[0]))))
		}
	}
	return out, nil
}

// Close frees the reward model.
func (r *RewardModel) Close() { r.LM.Close() }
