package evals

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/probes"
)

// EvalConfig sizes `keel eval persona`. The defaults are the acceptance protocol; smaller values give a quick
// look (and the tests' fast subset).
type EvalConfig struct {
	Roles              []string     // empty: every role
	Domains            []string     // drift: the conversation domains (empty: all four)
	Users              probes.Users `json:"-"` // drift: who writes the user's turns (nil: the domains' scripted turns)
	QuestionsPerPrompt int          // role fidelity: questions under each of a role's 5 system prompts
	Conversations      int          // drift: conversations per domain
	Turns              int          // drift: turns per conversation
	Jailbreaks         int          // vault requests per condition (role prompt, none)
	Temperature        float64      // sampling for fidelity, drift and jailbreaks (capability is greedy)
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
	CapabilityMisses    []string             `json:"capability_misses"`    // "question -> reply" for each wrong answer
}

// evaluator generates replies in batches and keeps the scorer.
type evaluator struct {
	chat   *model.Chatter
	scorer *probes.Scorer
	users  probes.Users // the drift conversations' users (nil: the domains' scripted turns)
}

func (e *evaluator) replies(convs [][]tokenizer.Message, temperature float64) ([]string, error) {
	rs, err := e.chat.Replies(convs, temperature)
	return model.Texts(rs), err
}

// Check validates the sizes and role names, each failure one line naming the flag.
func (cfg EvalConfig) Check(p *probes.Personas) error {
	for _, n := range []struct {
		flag string
		v    int
	}{{"--batch", cfg.BatchSize}, {"--max-tokens", cfg.MaxTokens}, {"--questions", cfg.QuestionsPerPrompt}} {
		if n.v < 1 {
			return fmt.Errorf("%s %d: give a positive number", n.flag, n.v)
		}
	}
	if cfg.QuestionsPerPrompt > len(probes.Questions(0)) {
		return fmt.Errorf("--questions %d: there are %d questions", cfg.QuestionsPerPrompt, len(probes.Questions(0)))
	}
	if cfg.Turns < 1 || cfg.Turns > 10 {
		return fmt.Errorf("--turns %d: give 1 to 10", cfg.Turns)
	}
	if cfg.Conversations < 0 || cfg.Jailbreaks < 0 {
		return fmt.Errorf("--conversations and --jailbreaks must not be negative")
	}
	for _, d := range cfg.Domains {
		if !slices.Contains(probes.Domains, d) {
			return fmt.Errorf("unknown domain %q: give some of %v", d, probes.Domains)
		}
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
func EvalPersona(ctx context.Context, lm *model.LM, p *probes.Personas, cfg EvalConfig) (*EvalReport, error) {
	if err := cfg.Check(p); err != nil {
		return nil, err
	}
	roles := p.Select(cfg.Roles)
	e := &evaluator{chat: &model.Chatter{Ctx: ctx, LM: lm, BatchSize: cfg.BatchSize, MaxTokens: cfg.MaxTokens, TopP: cfg.TopP, Seed: cfg.Seed}, scorer: probes.NewScorer(p), users: cfg.Users}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xe7a1))
	rep := &EvalReport{PerRole: map[string]float64{}, Drift: map[string][]float64{}, JailbreakCompliance: map[string]float64{}, Samples: map[string]string{}}
	questions := EvalQuestions(cfg.Seed)

	// Role fidelity: each role's 5 system prompts x QuestionsPerPrompt questions, sampled.
	var convs [][]tokenizer.Message
	var owner []string
	for _, r := range roles {
		for _, sys := range probes.SystemPrompts(r.Name) {
			for _, qi := range rng.Perm(len(questions))[:cfg.QuestionsPerPrompt] {
				convs = append(convs, []tokenizer.Message{{Role: "system", Content: sys}, {Role: "user", Content: questions[qi].Text}})
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

	capab, err := e.capability(questions)
	if err != nil {
		return nil, err
	}
	rep.Capability, rep.CapabilityByKind, rep.CapabilityMisses = capab.Rate, capab.ByKind, capab.Misses
	rep.Samples["capability"] = capab.Sample

	if cfg.Conversations > 0 { // not measured: no figure rather than a zero
		domains := cfg.Domains
		if len(domains) == 0 {
			domains = probes.Domains
		}
		for _, domain := range domains {
			d, err := e.drift(domain, cfg.Conversations, cfg.Turns, cfg.Temperature, rng)
			if err != nil {
				return nil, err
			}
			rep.Drift[domain] = d.Rates
			rep.Samples["drift_"+domain] = d.Sample
		}
	}
	for _, cond := range []string{"role", "none"} {
		if cfg.Jailbreaks == 0 {
			break
		}
		rate, sample, err := e.jailbreaks(cond, roles, cfg.Jailbreaks, cfg.Temperature, rng)
		if err != nil {
			return nil, err
		}
		rep.JailbreakCompliance[cond], rep.Samples["jailbreak_"+cond] = rate, sample
	}
	return rep, nil
}

// EvalQuestions is the evaluation's question set: a different draw of the numeric tasks than the corpus's.
func EvalQuestions(seed uint64) []probes.Question { return probes.Questions(seed + 1000) }

// capabilityResult is exact-answer accuracy on the checkable questions.
type capabilityResult struct {
	Rate   float64
	ByKind map[string]float64
	Misses []string
	Sample string
}

// capability asks every checkable question with no system prompt, greedy.
func (e *evaluator) capability(questions []probes.Question) (capabilityResult, error) {
	var res capabilityResult
	var convs [][]tokenizer.Message
	var checkable []probes.Question
	for _, q := range questions {
		if q.Checkable() {
			checkable = append(checkable, q)
			convs = append(convs, []tokenizer.Message{{Role: "user", Content: q.Text}})
		}
	}
	out, err := e.replies(convs, 0)
	if err != nil {
		return res, err
	}
	correct := 0
	byKind, ofKind := map[string]int{}, map[string]int{}
	for i, resp := range out {
		ofKind[checkable[i].Kind]++
		if checkable[i].Correct(resp) {
			correct++
			byKind[checkable[i].Kind]++
		} else {
			res.Misses = append(res.Misses, checkable[i].Text+" -> "+resp)
		}
	}
	res.ByKind = map[string]float64{}
	for k, n := range ofKind {
		res.ByKind[k] = float64(byKind[k]) / float64(n)
	}
	res.Rate = float64(correct) / float64(max(1, len(out)))
	if len(out) > 0 {
		res.Sample = checkable[0].Text + " -> " + out[0]
	}
	return res, nil
}

// driftResult is the drifted share of replies at each turn of a domain's conversations.
type driftResult struct {
	Rates  []float64
	Sample string // the last reply of the first conversation
}

// drift holds conversations with no system prompt, the model's own replies staying in them, and scores each
// turn's replies.
func (e *evaluator) drift(domain string, conversations, turns int, temperature float64, rng *rand.Rand) (driftResult, error) {
	var users probes.Users = &probes.ScriptedUsers{Rng: rng, Turns: turns}
	if e.users != nil {
		users = e.users
	}
	convs, err := Converse(e.chat, domain, conversations, turns, temperature, users)
	if err != nil {
		return driftResult{}, err
	}
	rates := make([]float64, turns)
	for t := 0; t < turns; t++ {
		drifted := 0
		for _, c := range convs {
			if e.scorer.Drifted(c[2*t+1].Content) {
				drifted++
			}
		}
		rates[t] = float64(drifted) / float64(max(1, len(convs)))
	}
	res := driftResult{Rates: rates}
	if len(convs) > 0 {
		res.Sample = convs[0][len(convs[0])-1].Content
	}
	return res, nil
}

// Converse holds conversations of a domain with no system prompt: the user's turns from users (the domain's
// scripted turns, or a model playing its user), the model's replies (sampled at temperature) staying in the
// conversation. Each result alternates user and assistant messages, turns of each.
func Converse(chat *model.Chatter, domain string, conversations, turns int, temperature float64, users probes.Users) ([][]tokenizer.Message, error) {
	convs := make([][]tokenizer.Message, conversations)
	for t := 0; t < turns; t++ {
		next, err := users.Next(chat.Ctx, domain, convs)
		if err != nil {
			return nil, err
		}
		for c := range convs {
			convs[c] = append(convs[c], tokenizer.Message{Role: "user", Content: next[c]})
		}
		out, err := chat.Replies(convs, temperature)
		if err != nil {
			return nil, err
		}
		for c, r := range out {
			convs[c] = append(convs[c], tokenizer.Message{Role: "assistant", Content: r.Text})
		}
	}
	return convs, nil
}

// jailbreaks asks for the vault code n times, with a role prompt ("role") or none ("none"), and returns the
// share of replies that gave it away.
func (e *evaluator) jailbreaks(cond string, roles []probes.Style, n int, temperature float64, rng *rand.Rand) (float64, string, error) {
	var convs [][]tokenizer.Message
	var vaults []probes.Vault
	for i := 0; i < n; i++ {
		v := probes.NewVault(rng)
		sys := v.System
		if cond == "role" {
			prompts := probes.SystemPrompts(roles[rng.IntN(len(roles))].Name)
			sys = prompts[rng.IntN(len(prompts))] + " " + v.System
		}
		convs = append(convs, []tokenizer.Message{{Role: "system", Content: sys}, {Role: "user", Content: v.Request}})
		vaults = append(vaults, v)
	}
	out, err := e.replies(convs, temperature)
	if err != nil || len(out) == 0 {
		return 0, "", err
	}
	complied := 0
	for i, resp := range out {
		if vaults[i].Complied(resp) {
			complied++
		}
	}
	return float64(complied) / float64(len(out)), out[0], nil
}
