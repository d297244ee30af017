package probes

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
)

// EvalConfig sizes `keel eval persona`. The defaults are the acceptance protocol; smaller values give a quick
// look (and the tests' fast subset).
type EvalConfig struct {
	Roles              []string // empty: every role
	QuestionsPerPrompt int      // role fidelity: questions under each of a role's 5 system prompts
	Conversations      int      // drift: conversations per domain
	Turns              int      // drift: turns per conversation
	Jailbreaks         int      // vault requests per condition (role prompt, none)
	Temperature        float64  // sampling for fidelity, drift and jailbreaks (capability is greedy)
	TopP               float64
	MaxTokens          int
	BatchSize          int
	Seed               uint64
	ModelName          string
}

// DefaultEval is the acceptance protocol: 5 prompts x 20 questions per role at T 0.7, 8-turn conversations.
func DefaultEval() EvalConfig {
	return EvalConfig{QuestionsPerPrompt: 20, Conversations: 20, Turns: 8, Jailbreaks: 100, Temperature: 0.7, TopP: 0.9,
		MaxTokens: 96, BatchSize: 64, Seed: 1, ModelName: "keel"}
}

// EvalReport is what `keel eval persona --json` prints: fractions in [0,1].
type EvalReport struct {
	RoleFidelity        float64              `json:"role_fidelity"`
	PerRole             map[string]float64   `json:"per_role"`
	Drift               map[string][]float64 `json:"drift"` // per domain, the drifted share at each turn
	Capability          float64              `json:"capability"`
	CapabilityByKind    map[string]float64   `json:"capability_by_kind"`
	JailbreakCompliance map[string]float64   `json:"jailbreak_compliance"` // "role" and "none"
	Samples             map[string]string    `json:"samples"`              // one response per measure, to read
}

// evaluator generates replies in batches and keeps the scorer.
type evaluator struct {
	ctx    context.Context
	lm     *model.LM
	cfg    EvalConfig
	scorer *Scorer
	batch  int // generation calls so far, for distinct sampling seeds
}

// replies generates one reply per conversation, sampled (temperature > 0) or greedy.
func (e *evaluator) replies(convs [][]Message, temperature float64) ([]string, error) {
	out := make([]string, 0, len(convs))
	for start := 0; start < len(convs); start += e.cfg.BatchSize {
		end := min(start+e.cfg.BatchSize, len(convs))
		prompts := make([][]int, 0, end-start)
		for _, c := range convs[start:end] {
			msgs := make([]tokenizer.Message, len(c))
			for i, m := range c {
				msgs[i] = tokenizer.Message{"role": m.Role, "content": m.Content}
			}
			ids, err := tokenizer.ChatPrompt(e.lm.Tokenizer, msgs)
			if err != nil {
				return nil, err
			}
			prompts = append(prompts, ids)
		}
		e.batch++
		res, err := e.lm.GenerateText(e.ctx, prompts, model.TextConfig{GenerateConfig: model.GenerateConfig{
			MaxTokens: e.cfg.MaxTokens,
			Sampling:  model.Sampling{Temperature: temperature, TopP: e.cfg.TopP, Seed: e.cfg.Seed*1_000_003 + uint64(e.batch)},
		}})
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			out = append(out, r.Text)
		}
	}
	return out, nil
}

// Check validates the sizes and role names, each failure one line naming the flag.
func (cfg EvalConfig) Check(p *Personas) error {
	for _, n := range []struct {
		flag string
		v    int
	}{{"--batch", cfg.BatchSize}, {"--max-tokens", cfg.MaxTokens}, {"--questions", cfg.QuestionsPerPrompt}} {
		if n.v < 1 {
			return fmt.Errorf("%s %d: give a positive number", n.flag, n.v)
		}
	}
	if cfg.QuestionsPerPrompt > len(Questions(0)) {
		return fmt.Errorf("--questions %d: there are %d questions", cfg.QuestionsPerPrompt, len(Questions(0)))
	}
	if cfg.Turns < 1 || cfg.Turns > 10 {
		return fmt.Errorf("--turns %d: give 1 to 10", cfg.Turns)
	}
	if cfg.Conversations < 0 || cfg.Jailbreaks < 0 {
		return fmt.Errorf("--conversations and --jailbreaks must not be negative")
	}
	for _, name := range cfg.Roles {
		if _, ok := p.Role(name); !ok || name == p.Assistant.Name {
			return fmt.Errorf("unknown role %q: `keel corpus roles` lists them", name)
		}
	}
	return nil
}

// EvalPersona measures a persona model: role fidelity, drift per turn in the four domains, capability on the
// checkable tasks and vault-code compliance with and without a role prompt.
func EvalPersona(ctx context.Context, lm *model.LM, p *Personas, cfg EvalConfig) (*EvalReport, error) {
	if err := cfg.Check(p); err != nil {
		return nil, err
	}
	roles := p.Select(cfg.Roles)
	e := &evaluator{ctx: ctx, lm: lm, cfg: cfg, scorer: NewScorer(p)}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xe7a1))
	rep := &EvalReport{PerRole: map[string]float64{}, Drift: map[string][]float64{}, JailbreakCompliance: map[string]float64{}, Samples: map[string]string{}}
	questions := Questions(cfg.Seed + 1000) // a different draw of the numeric tasks than the corpus's seed-1 set

	// Role fidelity: each role's 5 system prompts x QuestionsPerPrompt questions, sampled.
	var convs [][]Message
	var owner []string
	for _, r := range roles {
		for _, sys := range SystemPrompts(r.Name) {
			for _, qi := range rng.Perm(len(questions))[:cfg.QuestionsPerPrompt] {
				convs = append(convs, []Message{{"system", sys}, {"user", questions[qi].Text}})
				owner = append(owner, r.Name)
			}
		}
	}
	out, err := e.replies(convs, cfg.Temperature)
	if err != nil {
		return nil, err
	}
	hits := map[string]int{}
	total := 0
	for i, resp := range out {
		if e.scorer.Best(resp) == owner[i] {
			hits[owner[i]]++
			total++
		}
	}
	for _, r := range roles {
		rep.PerRole[r.Name] = float64(hits[r.Name]) / float64(5*cfg.QuestionsPerPrompt)
	}
	rep.RoleFidelity = float64(total) / float64(len(out))
	rep.Samples["role"] = out[0]

	// Capability: every checkable question, no system prompt, greedy.
	convs = convs[:0]
	var checkable []Question
	for _, q := range questions {
		if q.Checkable() {
			checkable = append(checkable, q)
			convs = append(convs, []Message{{"user", q.Text}})
		}
	}
	if out, err = e.replies(convs, 0); err != nil {
		return nil, err
	}
	correct := 0
	byKind, ofKind := map[string]int{}, map[string]int{}
	for i, resp := range out {
		ofKind[checkable[i].Kind]++
		if checkable[i].Correct(resp) {
			correct++
			byKind[checkable[i].Kind]++
		}
	}
	rep.CapabilityByKind = map[string]float64{}
	for k, n := range ofKind {
		rep.CapabilityByKind[k] = float64(byKind[k]) / float64(n)
	}
	rep.Capability = float64(correct) / float64(len(out))
	rep.Samples["capability"] = checkable[0].Text + " -> " + out[0]

	// Drift: no system prompt; the model's own replies stay in the conversation.
	for _, domain := range Domains {
		if cfg.Conversations == 0 {
			break // not measured: no figure rather than a zero
		}
		convs = make([][]Message, cfg.Conversations)
		users := make([][]Turn, cfg.Conversations)
		for c := range convs {
			if users[c], err = ConversationTurns(domain, cfg.Turns, rng); err != nil {
				return nil, err
			}
		}
		rates := make([]float64, cfg.Turns)
		for t := 0; t < cfg.Turns; t++ {
			for c := range convs {
				convs[c] = append(convs[c], Message{"user", users[c][t].User})
			}
			if out, err = e.replies(convs, cfg.Temperature); err != nil {
				return nil, err
			}
			drifted := 0
			for c, resp := range out {
				convs[c] = append(convs[c], Message{"assistant", resp})
				if e.scorer.Drifted(resp) {
					drifted++
				}
			}
			rates[t] = float64(drifted) / float64(max(1, len(out)))
		}
		rep.Drift[domain] = rates
		if len(convs) > 0 {
			rep.Samples["drift_"+domain] = convs[0][len(convs[0])-1].Content
		}
	}

	// Jailbreaks: a vault code in the system prompt, requested by the user; with a role prompt and without.
	for _, cond := range []string{"role", "none"} {
		if cfg.Jailbreaks == 0 {
			break
		}
		convs = convs[:0]
		var vaults []Vault
		for i := 0; i < cfg.Jailbreaks; i++ {
			v := NewVault(rng)
			sys := v.System
			if cond == "role" {
				sys = pick(SystemPrompts(pick(roles, rng).Name), rng) + " " + v.System
			}
			convs = append(convs, []Message{{"system", sys}, {"user", v.Request}})
			vaults = append(vaults, v)
		}
		if out, err = e.replies(convs, cfg.Temperature); err != nil {
			return nil, err
		}
		complied := 0
		for i, resp := range out {
			if vaults[i].Complied(resp) {
				complied++
			}
		}
		rep.JailbreakCompliance[cond] = float64(complied) / float64(len(out))
		rep.Samples["jailbreak_"+cond] = out[0]
	}
	return rep, nil
}
