package model

import (
	"context"

	"github.com/keel-lab/keel/engine/tokenizer"
)

// Chatter generates replies to many chats in batches, under the interventions in Hooks (nil: none). Every
// batch gets its own sampling seed, derived from Seed and the batch's number, so a run repeats exactly.
type Chatter struct {
	Ctx       context.Context
	LM        *LM
	BatchSize int
	MaxTokens int
	TopP      float64
	Seed      uint64
	Hooks     *Hooks
	batches   int
}

// Reply is a generated reply with the tokens it came from, for teacher forcing it again.
type Reply struct {
	Text   string
	Prompt []int // the rendered chat with the assistant's header
	IDs    []int // the reply's tokens, end-of-sequence excluded
}

// Replies answers each chat (its last message is the user's); temperature 0 is greedy.
func (c *Chatter) Replies(convs [][]tokenizer.Message, temperature float64) ([]Reply, error) {
	out := make([]Reply, 0, len(convs))
	eos := map[int]bool{}
	for _, e := range c.LM.EOS() {
		eos[e] = true
	}
	for start := 0; start < len(convs); start += c.BatchSize {
		end := min(start+c.BatchSize, len(convs))
		prompts := make([][]int, 0, end-start)
		for _, conv := range convs[start:end] {
			ids, err := tokenizer.ChatPrompt(c.LM.Tokenizer, conv)
			if err != nil {
				return nil, err
			}
			prompts = append(prompts, ids)
		}
		c.batches++
		res, err := c.LM.GenerateText(c.Ctx, prompts, TextConfig{GenerateConfig: GenerateConfig{
			MaxTokens: c.MaxTokens,
			Hooks:     c.Hooks,
			Sampling:  Sampling{Temperature: temperature, TopP: c.TopP, Seed: c.Seed*1_000_003 + uint64(c.batches)},
		}})
		if err != nil {
			return nil, err
		}
		for i, r := range res {
			ids := r.IDs
			for len(ids) > 0 && eos[ids[len(ids)-1]] {
				ids = ids[:len(ids)-1]
			}
			out = append(out, Reply{Text: r.Text, Prompt: prompts[i], IDs: ids})
		}
	}
	return out, nil
}

// Texts is the replies' texts.
func Texts(rs []Reply) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Text
	}
	return out
}
