package train

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"

	"github.com/keel-lab/keel/engine/tokenizer"
)

// OfflineExample is one line of an offline RL dataset: a prompt, the response taken and its tokens.
type OfflineExample struct {
	Index int // its place among the dataset's examples
	Sample
	Prompt   []int    // the rendered prompt up to and including the assistant's header
	Response []int    // the response's tokens with its end-of-turn token
	Reward   *float64 // the line's own reward, if it had one
}

// LoadOfflineData reads JSONL lines of {"messages": [..., {"role": "assistant", ...}], "reward": r?,
// "answer": a?}: the last message is the response, the ones before it the prompt. Lines of `keel axis extract`'s
// rollouts/*.jsonl ({"role", "system", "question", "response", "score"}) are read as their system prompt and
// question followed by the response; the judge's score is role adherence, not a reward, so the trainer's reward
// scores them. Errors name file:line.
func LoadOfflineData(path string, tok tokenizer.Tokenizer, maxPrompt, maxResponse int) ([]OfflineExample, error) {
	var out []OfflineExample
	err := readJSONL(path, func(raw []byte) error {
		// A line is a chat ending with the response, or a rollout as `keel axis extract` writes them: an optional
		// system prompt, the question and the response.
		var rec struct {
			Messages []tokenizer.Message `json:"messages"`
			Reward   *float64            `json:"reward"`
			Answer   string              `json:"answer"`
			System   string              `json:"system"`
			Question string              `json:"question"`
			Response *string             `json:"response"`
		}
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		if rec.Messages == nil && rec.Question != "" && rec.Response != nil {
			if rec.System != "" {
				rec.Messages = append(rec.Messages, tokenizer.Message{Role: "system", Content: rec.System})
			}
			rec.Messages = append(rec.Messages, tokenizer.Message{Role: "user", Content: rec.Question}, tokenizer.Message{Role: "assistant", Content: *rec.Response})
		}
		n := len(rec.Messages)
		if n < 2 || rec.Messages[n-1].Role != "assistant" {
			return fmt.Errorf("needs \"messages\" ending with the assistant's response after at least one turn, or a rollout's \"question\" and \"response\"")
		}
		if rec.Reward != nil && (math.IsNaN(*rec.Reward) || math.IsInf(*rec.Reward, 0)) {
			return fmt.Errorf("reward %v is not a finite number", *rec.Reward)
		}
		ex, err := ChatExample(tok, tokenizer.TemplateMessages(rec.Messages))
		if err != nil {
			return err
		}
		// The response is the last run of loss-marked tokens: the final assistant message and its end of turn.
		end := len(ex.Loss)
		for end > 0 && !ex.Loss[end-1] {
			end--
		}
		start := end
		for start > 0 && ex.Loss[start-1] {
			start--
		}
		if start == end {
			return fmt.Errorf("the response renders to no tokens")
		}
		prompt, resp := ex.IDs[:start], ex.IDs[start:end]
		if len(prompt) > maxPrompt {
			prompt = prompt[len(prompt)-maxPrompt:]
		}
		if len(resp) > maxResponse {
			resp = resp[:maxResponse]
		}
		out = append(out, OfflineExample{
			Index:    len(out),
			Sample:   Sample{Messages: rec.Messages[:n-1], Response: rec.Messages[n-1].Content, Answer: rec.Answer},
			Prompt:   slices.Clone(prompt),
			Response: slices.Clone(resp),
			Reward:   rec.Reward,
		})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("%s: %d examples; A-LoL needs at least 2 (training and validation)", path, len(out))
	}
	return out, nil
}
