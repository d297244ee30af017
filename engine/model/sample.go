package model

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Sampling chooses the next token from logits.
type Sampling struct {
	Temperature       float64 `json:"temperature"`                  // 0 = greedy
	TopK              int     `json:"top_k,omitempty"`              // 0 = off
	TopP              float64 `json:"top_p,omitempty"`              // 0 or 1 = off
	MinP              float64 `json:"min_p,omitempty"`              // 0 = off
	RepetitionPenalty float64 `json:"repetition_penalty,omitempty"` // 0 or 1 = off (Hugging Face's form)
	Seed              uint64  `json:"seed"`
	// OpenAI's penalties, over the tokens generated so far (not the prompt): a token's logit loses
	// PresencePenalty once it has appeared and FrequencyPenalty per appearance (-2 to 2; 0 = off).
	PresencePenalty  float64 `json:"presence_penalty,omitempty"`
	FrequencyPenalty float64 `json:"frequency_penalty,omitempty"`
	// LogitBias is added to the named tokens' logits (-100 to 100) before every choice.
	LogitBias map[int]float64 `json:"logit_bias,omitempty"`
	// Logprobs asks for the chosen token's log-probability and the TopLogprobs most likely (0 to 20): the
	// log-softmax of the logits the token is chosen from (after the interventions, the penalties and the bias,
	// before temperature and truncation).
	Logprobs    bool `json:"logprobs,omitempty"`
	TopLogprobs int  `json:"top_logprobs,omitempty"`
}

// MaxTopLogprobs bounds TopLogprobs, as OpenAI's API does.
const MaxTopLogprobs = 20

// TokenLogprob is one token's log-probability.
type TokenLogprob struct {
	ID      int
	Logprob float64
}

// Logprobs are a chosen token's log-probability and the most likely tokens at its position, most likely first
// (ties in id order).
type Logprobs struct {
	Chosen TokenLogprob
	Top    []TokenLogprob
}

// Check refuses settings that cannot mean anything, in one line naming the setting: the one rule the command line,
// the workbench and the REPL apply to what a user types. Zero keeps its meaning for top-p and the repetition
// penalty (off).
func (sp Sampling) Check() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case !finite(sp.Temperature) || sp.Temperature < 0:
		return fmt.Errorf("temperature %v: give a number >= 0 (0 = greedy)", sp.Temperature)
	case sp.TopK < 0:
		return fmt.Errorf("top-k %d: give 0 (off) or a positive count", sp.TopK)
	case !finite(sp.TopP) || sp.TopP < 0 || sp.TopP > 1:
		return fmt.Errorf("top-p %v: give a number in (0, 1] (1 = off)", sp.TopP)
	case !finite(sp.MinP) || sp.MinP < 0 || sp.MinP >= 1:
		return fmt.Errorf("min-p %v: give a number in [0, 1) (0 = off)", sp.MinP)
	case !finite(sp.RepetitionPenalty) || sp.RepetitionPenalty < 0:
		return fmt.Errorf("repetition penalty %v: give a number > 0 (1 = off)", sp.RepetitionPenalty)
	case !finite(sp.PresencePenalty) || math.Abs(sp.PresencePenalty) > 2:
		return fmt.Errorf("presence penalty %v: give a number from -2 to 2 (0 = off)", sp.PresencePenalty)
	case !finite(sp.FrequencyPenalty) || math.Abs(sp.FrequencyPenalty) > 2:
		return fmt.Errorf("frequency penalty %v: give a number from -2 to 2 (0 = off)", sp.FrequencyPenalty)
	case sp.TopLogprobs < 0 || sp.TopLogprobs > MaxTopLogprobs:
		return fmt.Errorf("top logprobs %d: give 0 to %d", sp.TopLogprobs, MaxTopLogprobs)
	}
	for id, b := range sp.LogitBias {
		if id < 0 || !finite(b) || math.Abs(b) > 100 {
			return fmt.Errorf("logit bias %d: %v: give token ids >= 0 and biases from -100 to 100", id, b)
		}
	}
	return nil
}

// CheckVocab refuses a logit bias naming a token the model does not have.
func (sp Sampling) CheckVocab(vocab int) error {
	for id := range sp.LogitBias {
		if id >= vocab {
			return fmt.Errorf("logit bias: token %d: the model's ids are 0 to %d", id, vocab-1)
		}
	}
	return nil
}

// greedyOnDevice reports whether the choice needs no logits on the host.
func (sp Sampling) greedyOnDevice() bool {
	return sp.Temperature == 0 && (sp.RepetitionPenalty == 0 || sp.RepetitionPenalty == 1) && sp.PresencePenalty == 0 &&
		sp.FrequencyPenalty == 0 && len(sp.LogitBias) == 0 && !sp.wantsLogprobs()
}

func (sp Sampling) wantsLogprobs() bool { return sp.Logprobs || sp.TopLogprobs > 0 }

// sampler holds the random stream of one generation (one stream per row, so batch composition does not change
// a row's samples) and each row's settings.
type sampler struct {
	cfgs   []Sampling
	rngs   []*rand.Rand
	prompt []int       // each row's prompt length: its context's generated tokens start there (nil: 0)
	lps    []*Logprobs // the last pick's log-probabilities per row, for rows that ask (nil otherwise)
}

// streamKey offsets a row's stream from its seed.
const streamKey = 0x9e3779b97f4a7c15

func newSampler(cfg Sampling, rows int) *sampler {
	s := &sampler{}
	for r := 0; r < rows; r++ {
		s.cfgs = append(s.cfgs, cfg)
		s.rngs = append(s.rngs, rand.New(rand.NewPCG(cfg.Seed, uint64(r)+streamKey)))
	}
	return s
}

// greedyOnDevice reports whether every row's choice needs no logits on the host.
func (s *sampler) greedyOnDevice() bool {
	for _, c := range s.cfgs {
		if !c.greedyOnDevice() {
			return false
		}
	}
	return true
}

// pick chooses a token from one row's logits (modified in place); context is the row's tokens so far.
func (s *sampler) pick(row int, logits []float32, context []int) int {
	c := s.cfgs[row]
	if c.PresencePenalty != 0 || c.FrequencyPenalty != 0 {
		generated := context
		if row < len(s.prompt) {
			generated = context[min(s.prompt[row], len(context)):]
		}
		counts := map[int]int{}
		for _, id := range generated {
			if id >= 0 && id < len(logits) {
				counts[id]++
			}
		}
		for id, n := range counts {
			logits[id] -= float32(c.PresencePenalty + c.FrequencyPenalty*float64(n))
		}
	}
	for id, b := range c.LogitBias {
		if id >= 0 && id < len(logits) {
			logits[id] += float32(b)
		}
	}
	id := s.choose(row, c, logits, context)
	if c.wantsLogprobs() {
		for len(s.lps) <= row {
			s.lps = append(s.lps, nil)
		}
		s.lps[row] = logprobsOf(logits, id, c.TopLogprobs)
	}
	return id
}

// logprobsOf is the log-softmax of logits at id and at the n most likely tokens.
func logprobsOf(logits []float32, id, n int) *Logprobs {
	top := math.Inf(-1)
	for _, l := range logits {
		top = math.Max(top, float64(l))
	}
	var sum float64
	for _, l := range logits {
		sum += math.Exp(float64(l) - top)
	}
	norm := top + math.Log(sum)
	lp := &Logprobs{Chosen: TokenLogprob{id, float64(logits[id]) - norm}}
	// The n most likely in one pass over the vocabulary (n is at most MaxTopLogprobs): a kept list in order,
	// a token entering only when it beats the list's last (ties keep the lower id first).
	best := make([]int, 0, n+1)
	for i, l := range logits {
		if len(best) == n && (n == 0 || l <= logits[best[n-1]]) {
			continue
		}
		k := len(best)
		for k > 0 && logits[best[k-1]] < l {
			k--
		}
		best = slices.Insert(best, k, i)
		if len(best) > n {
			best = best[:n]
		}
	}
	for _, i := range best {
		lp.Top = append(lp.Top, TokenLogprob{i, float64(logits[i]) - norm})
	}
	return lp
}

// choose is the choice itself, from logits the penalties and bias have been applied to.
func (s *sampler) choose(row int, c Sampling, logits []float32, context []int) int {
	if c.RepetitionPenalty > 0 && c.RepetitionPenalty != 1 {
		seen := map[int]bool{}
		for _, id := range context {
			if id < 0 || id >= len(logits) || seen[id] {
				continue
			}
			seen[id] = true
			if logits[id] > 0 {
				logits[id] /= float32(c.RepetitionPenalty)
			} else {
				logits[id] *= float32(c.RepetitionPenalty)
			}
		}
	}
	if c.Temperature <= 0 {
		return argmax(logits)
	}
	type cand struct {
		id int
		p  float64
	}
	cands := make([]cand, len(logits))
	maxL := math.Inf(-1)
	for i, l := range logits {
		v := float64(l) / c.Temperature
		cands[i] = cand{i, v}
		maxL = math.Max(maxL, v)
	}
	var sum float64
	for i := range cands {
		cands[i].p = math.Exp(cands[i].p - maxL)
		sum += cands[i].p
	}
	// Nucleus sampling alone reads only the head of the sorted list: when the tokens within 1e-4 of the top hold
	// top_p of the mass, the nucleus lies among them and only they need sorting (the same tokens, in the same
	// order, as sorting them all). The mass the cumulative share is taken of stays the whole vocabulary's.
	all := sum
	if c.TopP > 0 && c.TopP < 1 && c.TopK == 0 && c.MinP == 0 {
		head := cands[:0:0]
		var mass float64
		for _, x := range cands {
			if x.p >= 1e-4 {
				head = append(head, x)
				mass += x.p
			}
		}
		if mass >= c.TopP*sum {
			cands = head
		}
	}
	// Highest first, ties in id order.
	slices.SortFunc(cands, func(a, b cand) int {
		if c := cmp.Compare(b.p, a.p); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	keep := len(cands)
	if c.TopK > 0 && c.TopK < keep {
		keep = c.TopK
	}
	if c.MinP > 0 {
		floor := c.MinP * cands[0].p
		for k := 1; k < keep; k++ {
			if cands[k].p < floor {
				keep = k
				break
			}
		}
	}
	if c.TopP > 0 && c.TopP < 1 {
		kept := all
		if keep < len(cands) {
			kept = 0
			for k := 0; k < keep; k++ {
				kept += cands[k].p
			}
		}
		var cum float64
		for k := 0; k < keep; k++ {
			cum += cands[k].p / kept
			if cum >= c.TopP {
				keep = k + 1
				break
			}
		}
	}
	var total float64
	for k := 0; k < keep; k++ {
		total += cands[k].p
	}
	r := s.rngs[row].Float64() * total
	for k := 0; k < keep; k++ {
		r -= cands[k].p
		if r <= 0 {
			return cands[k].id
		}
	}
	return cands[keep-1].id
}

func argmax(xs []float32) int {
	best := 0
	for i, x := range xs {
		if x > xs[best] {
			best = i
		}
	}
	return best
}
