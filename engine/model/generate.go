package model

import (
	"context"
	"fmt"
	"math"

	"github.com/keel-lab/keel/engine/torch"
)

// Step is one generated token of one row, with what the interventions recorded at it.
type Step struct {
	Row     int
	Index   int // 0 for the first generated token
	ID      int
	Records []Record
	// Version is the Hooks version whose list the token's pass ran under (which interventions made it).
	Version uint64
	// Logprobs, when the sampling asks for them, are the token's log-probabilities (nil for a forced token).
	Logprobs *Logprobs
}

// GenerateConfig controls a generation.
type GenerateConfig struct {
	MaxTokens int
	Sampling
	EOS   []int
	Hooks *Hooks
	// OnStep is called for every token of every live row, in order; returning stop=true ends that row
	// (stop strings are checked here by the caller, who has the text); an error ends the generation.
	OnStep func(Step) (stop bool, err error)
	// PromptRecords, when set, receives the records of the prompt's positions (the prefill pass).
	PromptRecords func(row int, recs [][]Record)
	// NoCache recomputes the whole sequence at every step instead of using the KV cache (a reference path).
	NoCache bool
	// Forced, when set, are each row's tokens to take in place of sampled ones (teacher forcing through the
	// generation path, KV cache and live hooks included: a recording's tokens run again as they ran); a row
	// ends after its last forced token.
	Forced [][]int
}

// prefillTokens bounds the tokens (rows x positions) of one prefill pass; longer prompts go through in chunks.
const prefillTokens = 8192

// Result is one row's generated tokens.
type Result struct {
	IDs    []int
	Reason string // "eos", "stop", "length", "cancelled"
}

// Generate continues each prompt (left-padded into one batch) until EOS, a stop, MaxTokens or ctx ends.
func (m *Model) Generate(ctx context.Context, prompts [][]int, g GenerateConfig) ([]Result, error) {
	if len(prompts) == 0 {
		return nil, nil
	}
	B := len(prompts)
	longest := 0
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("prompt %d is empty: start it with the BOS token", i)
		}
		longest = max(longest, len(p))
	}
	if g.MaxTokens <= 0 {
		return nil, fmt.Errorf("max tokens must be positive (got %d)", g.MaxTokens)
	}
	// No reply is longer than the model's context window: a larger request would only allocate a cache the
	// model has no positions for. (Prompts are the caller's to bound: a batch keeps every row's own budget.)
	if window := m.Config.MaxPositionEmbeddings; window > 0 {
		g.MaxTokens = min(g.MaxTokens, window)
	}
	pad := make([]int, B)
	rows := make([][]int, B)
	for i, p := range prompts {
		pad[i] = longest - len(p)
		rows[i] = append(make([]int, pad[i]), p...) // padding id 0: masked out, never attended to
	}
	var cache *Cache
	if !g.NoCache {
		var err error
		if cache, err = m.NewCache(pad, longest+g.MaxTokens); err != nil {
			return nil, err
		}
		defer cache.Close()
	}
	list, version := g.Hooks.Snapshot()
	var plan *hookPlan
	defer func() { plan.close() }()
	isEOS := map[int]bool{}
	for _, e := range g.EOS {
		isEOS[e] = true
	}
	smp := newSampler(g.Sampling, B)
	for _, p := range prompts {
		smp.prompt = append(smp.prompt, len(p))
	}
	results := make([]Result, B)
	live := B
	s := m.RT.NewScope().NoGrad()
	defer s.Close()
	// The tokens to feed: the whole prompt first, then one per row. A copy of rows' slice headers: chunked
	// prefill cuts next[b], and rows[b] must keep the whole prompt (the sampler's repetition context).
	next := append([][]int(nil), rows...)
	for step := 0; step < g.MaxTokens && live > 0; step++ {
		if err := ctx.Err(); err != nil {
			for i := range results {
				if results[i].Reason == "" {
					results[i].Reason = "cancelled"
				}
			}
			return results, err
		}
		if plan == nil || version != plan.version {
			plan.close()
			var err error
			if plan, err = m.compileHooks(list, version); err != nil {
				return results, err
			}
		}
		var promptRecs [][][]Record // records of the prompt positions before the last prefill chunk
		inertList, generatedOnly := inertOnPrompt(list)
		if step == 0 && generatedOnly && g.NoCache {
			return results, fmt.Errorf("an intervention on generated tokens only needs the KV cache (NoCache recomputes the prompt at every step)")
		}
		if step == 0 && cache != nil {
			// The prompt goes through in chunks of at most prefillTokens tokens over the batch: a batch of long
			// prompts in one pass makes every activation a fresh allocation of tens of MB (fresh pages each
			// time), and the cache makes chunks exactly equivalent to one pass. Interventions on generated tokens
			// only are inert there: the last prompt position, which chooses the first reply token, goes alone.
			prefill := plan
			if generatedOnly {
				inert, err := m.compileHooks(inertList, version)
				if err != nil {
					return results, err
				}
				defer inert.close()
				prefill = inert
			}
			chunk := max(16, prefillTokens/B)
			for len(next[0]) > chunk || generatedOnly && len(next[0]) > 1 {
				n := chunk
				if generatedOnly {
					n = min(chunk, len(next[0])-1)
				}
				head := make([][]int, B)
				for b := range next {
					head[b], next[b] = next[b][:n], next[b][n:]
				}
				out := m.forward(s, Pass{IDs: head, Cache: cache, LastOnly: true, plan: prefill})
				if err := s.Err(); err != nil {
					return results, err
				}
				if out.records != nil {
					if promptRecs == nil {
						promptRecs = make([][][]Record, B)
					}
					for b := range promptRecs {
						promptRecs[b] = append(promptRecs[b], out.records[b]...)
					}
				}
				cache.Len += n
				s.Release()
			}
		}
		pass := Pass{IDs: next, Cache: cache, LastOnly: true, plan: plan}
		if g.NoCache {
			pass.IDs, pass.Pad = rows, pad
		}
		out := m.forward(s, pass)
		recs := out.records
		chosen, err := m.choose(s, out, smp, rows, pad)
		if err != nil {
			return results, err
		}
		lps := make([]*Logprobs, B)
		copy(lps, smp.lps)
		for b := range g.Forced {
			if b < B && step < len(g.Forced[b]) {
				if chosen[b] != g.Forced[b][step] {
					lps[b] = nil
				}
				chosen[b] = g.Forced[b][step]
			}
		}
		if m.Opts.Device.CUDA {
			// A full device synchronisation at each step's end. On an H100 (scripts/device-check.sh, decode
			// variants of one run) a 1B bf16 model decoded at 123 tok/s with it and 61 tok/s with only the
			// blocking copy of the chosen ids.
			if err := m.RT.Synchronize(m.Opts.Device.Index); err != nil {
				return results, err
			}
		}
		T := len(pass.IDs[0])
		if cache != nil {
			cache.Len += T
		}
		if step == 0 && g.PromptRecords != nil && recs != nil {
			for b := range recs {
				all := recs[b]
				if promptRecs != nil { // the prompt went through in more than one chunk
					all = append(promptRecs[b], recs[b]...)
				}
				g.PromptRecords(b, all[pad[b]:max(len(all)-1, pad[b])])
			}
		}
		next = make([][]int, B)
		for b := 0; b < B; b++ {
			next[b] = []int{chosen[b]}
			rows[b] = append(rows[b], chosen[b])
			if results[b].Reason != "" {
				continue
			}
			results[b].IDs = append(results[b].IDs, chosen[b])
			var r []Record
			if recs != nil {
				r = recs[b][T-1]
			}
			stop := false
			if g.OnStep != nil {
				if stop, err = g.OnStep(Step{Row: b, Index: step, ID: chosen[b], Records: r, Version: plan.version, Logprobs: lps[b]}); err != nil {
					return results, err
				}
			}
			switch {
			case isEOS[chosen[b]]:
				results[b].Reason = "eos"
			case stop:
				results[b].Reason = "stop"
			case b < len(g.Forced) && step+1 >= len(g.Forced[b]):
				results[b].Reason = "forced"
			}
			if results[b].Reason != "" {
				live--
			}
		}
		s.Release()
		list, version = g.Hooks.Snapshot()
	}
	for i := range results {
		if results[i].Reason == "" {
			results[i].Reason = "length"
		}
	}
	return results, nil
}

// choose picks each row's next token from a pass's logits ([B, 1, V], or on the host after a fused step).
func (m *Model) choose(s *torch.Scope, pass passOut, smp *sampler, rows [][]int, pad []int) ([]int, error) {
	B := len(rows)
	out := make([]int, B)
	logits := pass.logits
	if pass.hostLogits == nil && smp.greedyOnDevice() {
		ids := s.Int64s(s.Argmax(logits, -1, false))
		// The row maxima say whether the logits are numbers at all (max propagates NaN).
		tops := s.Float32s(s.To(s.Max(logits, -1, false), torch.Float32, m.Opts.Device))
		if err := s.Err(); err != nil {
			return nil, err
		}
		for b := range out {
			if err := finiteLogits(b, tops[b]); err != nil {
				return nil, err
			}
			out[b] = int(ids[b])
		}
		return out, nil
	}
	V := m.Config.VocabSize
	host := pass.hostLogits
	if host == nil {
		host = make([]float32, B*V)
		s.CopyToHost(logits, host)
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	for b := range out {
		row := host[b*V : (b+1)*V]
		top := float32(math.Inf(-1))
		for _, v := range row {
			if v != v {
				top = v
				break
			}
			top = max(top, v)
		}
		if err := finiteLogits(b, top); err != nil {
			return nil, err
		}
		out[b] = smp.pick(b, row, rows[b][pad[b]:])
	}
	return out, nil
}

// finiteLogits refuses a step whose logits are not numbers: weights holding NaN or Inf give NaN logits, and a
// token chosen from them is garbage.
func finiteLogits(row int, top float32) error {
	if math.IsNaN(float64(top)) || math.IsInf(float64(top), 0) {
		return fmt.Errorf("row %d: the model's logits are %v: its weights or config hold NaN or Inf", row, top)
	}
	return nil
}
