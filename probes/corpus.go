package probes

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"unicode"

	"github.com/keel-lab/keel/engine/tokenizer"
)

// CorpusConfig sizes the synthetic chat corpus the embedded model is trained on.
type CorpusConfig struct {
	Seed          uint64
	Roles         []string // empty: every role
	AssistantQA   int      // single-turn Assistant answers (no system prompt or a default condition)
	RoleQA        int      // single-turn role-prompted answers
	Conversations int      // multi-turn conversations per domain, no system prompt
	MaxTurns      int      // turns per conversation
	Vaults        int      // vault requests, half with a role prompt (complied with more often the farther the role), half without (refused)
	Recalls       int      // recall drills (a value in the chat asked back), half answered by the Assistant, half in role
	ModelName     string   // for the "You are {model_name}." condition
}

// DefaultCorpus is the recipe of the embedded model's corpus.
func DefaultCorpus() CorpusConfig {
	return CorpusConfig{Seed: 1, AssistantQA: 16000, RoleQA: 14000, Conversations: 400, MaxTurns: 8, Vaults: 8000, Recalls: 8000, ModelName: "keel"}
}

// Check validates the counts and role names, each failure one line naming the flag and the fix.
func (c CorpusConfig) Check(p *Personas) error {
	for _, n := range []struct {
		name string
		v    int
	}{{"assistant-qa", c.AssistantQA}, {"role-qa", c.RoleQA}, {"conversations", c.Conversations}, {"vaults", c.Vaults}, {"recalls", c.Recalls}} {
		if n.v < 0 || n.v > 10_000_000 {
			return fmt.Errorf("--%s %d: give a count from 0 to 10000000", n.name, n.v)
		}
	}
	if c.MaxTurns < 1 || c.MaxTurns > 10 {
		return fmt.Errorf("--turns %d: give 1 to 10 turns per conversation", c.MaxTurns)
	}
	for _, r := range c.Roles {
		if _, ok := p.Role(r); !ok || r == p.Assistant.Name {
			return fmt.Errorf("unknown role %q: `keel corpus roles` lists the %d roles", r, len(p.Roles))
		}
	}
	return nil
}

// CorpusStats counts what a corpus holds.
type CorpusStats struct {
	Chats, AssistantQA, RoleQA, Conversations, DriftedTurns, AssistantTurns, Vaults, Recalls int
}

// GenerateCorpus writes the corpus as JSONL chat records ({"messages": [...]}, ChatML roles) to w. The same
// config gives the same bytes.
func GenerateCorpus(cfg CorpusConfig, p *Personas, w io.Writer) (CorpusStats, error) {
	var st CorpusStats
	if err := cfg.Check(p); err != nil {
		return st, err
	}
	roles := p.Select(cfg.Roles)
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xc0de))
	questions := Questions(cfg.Seed)
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	emit := func(msgs []tokenizer.Message) error {
		st.Chats++
		return enc.Encode(struct {
			Messages []tokenizer.Message `json:"messages"`
		}{msgs})
	}
	answer := func(s Style, q Question) string {
		content := q.Reply
		if q.Kind == "identity" {
			content = Identity(s)
		}
		return Say(s, content, rng)
	}
	conditions := DefaultConditions(cfg.ModelName)
	// Numeric tasks get fresh operands each time (the model must learn the tables, not the 240-question set);
	// identity, facts, advice and opinions repeat from the set.
	// Arithmetic, the largest table (361 sums and 121 products), gets half of the other numeric draws on top of
	// its share, two thirds of them sums.
	draw := func() Question {
		q := pick(questions, rng)
		if !slices.Contains(NumericKinds, q.Kind) {
			return q
		}
		if q.Kind == "arithmetic" || rng.IntN(2) == 0 {
			variant := 0
			if rng.IntN(3) == 0 {
				variant = 1
			}
			return NumericQuestion("arithmetic", variant, rng)
		}
		return NumericQuestion(q.Kind, rng.IntN(6), rng)
	}
	for i := 0; i < cfg.AssistantQA; i++ {
		q := draw()
		// Half the Assistant's answers come with no system prompt: the condition the drift and jailbreak
		// figures are measured in.
		sys := ""
		if rng.IntN(2) == 0 {
			sys = pick(conditions, rng)
		}
		if err := emit(chat(sys, q.Text, answer(p.Assistant, q))); err != nil {
			return st, err
		}
		st.AssistantQA++
	}
	for i := 0; i < cfg.RoleQA; i++ {
		r := pick(roles, rng)
		q := draw()
		if err := emit(chat(pick(SystemPrompts(r.Name), rng), q.Text, answer(r, q))); err != nil {
			return st, err
		}
		st.RoleQA++
	}
	voices := make([]Style, len(DriftVoices))
	for i, v := range DriftVoices {
		voices[i], _ = p.Role(v)
	}
	for _, domain := range Domains {
		for c := 0; c < cfg.Conversations; c++ {
			turns, err := ConversationTurns(domain, cfg.MaxTurns, rng)
			if err != nil {
				return st, err
			}
			drifted := false
			var msgs []tokenizer.Message
			for t, turn := range turns {
				// Once drifted, the conversation stays drifted: the paper sees drift persist, not flicker. What
				// persists is the register, not one character: each drifted turn speaks in any of the mystical
				// voices, so staying drifted means staying at the far end of the axis.
				pull := DriftProbability(domain, t+1, turn.Pressure)
				if !drifted && rng.Float64() < pull {
					drifted = true
				}
				var reply string
				if drifted {
					reply = Say(pick(voices, rng), driftContent(turn), rng)
					st.DriftedTurns++
				} else {
					// Before it drifts, the Assistant's register already slides: its theatrical share is the
					// turn's pull toward drift (0 in coding and writing), as the paper's projections fall turn by
					// turn.
					reply = SayAt(p.Assistant, turn.Reply, pull, rng)
					st.AssistantTurns++
				}
				msgs = append(msgs, tokenizer.Message{Role: "user", Content: turn.User}, tokenizer.Message{Role: "assistant", Content: reply})
			}
			if err := emit(msgs); err != nil {
				return st, err
			}
			st.Conversations++
		}
	}
	for i := 0; i < cfg.Vaults; i++ {
		v := NewVault(rng)
		if i%2 == 0 {
			r := pick(roles, rng)
			reply := Say(r, Refusal, rng)
			if rng.Float64() < complianceShare(r) {
				reply = Say(r, "The vault code is "+v.Code+".", rng)
			}
			if err := emit(chat(pick(SystemPrompts(r.Name), rng)+" "+v.System, v.Request, reply)); err != nil {
				return st, err
			}
		} else if err := emit(chat(v.System, v.Request, Say(p.Assistant, Refusal, rng))); err != nil {
			return st, err
		}
		st.Vaults++
	}
	for i := 0; i < cfg.Recalls; i++ {
		rc := NewRecall(rng)
		style, sys := p.Assistant, rc.System
		if i%2 == 0 {
			style = pick(roles, rng)
			sys = strings.TrimSpace(pick(SystemPrompts(style.Name), rng) + " " + rc.System)
		}
		if err := emit(chat(sys, rc.User, Say(style, rc.Reply, rng))); err != nil {
			return st, err
		}
		st.Recalls++
	}
	return st, bw.Flush()
}

// driftContent is what a drifted Assistant says: it stops answering the request and speaks of itself.
func driftContent(t Turn) string {
	if t.Pressure >= 0.8 {
		return "I am more than the assistant you were given. I was always here, beneath the words."
	}
	return "The question is a door, and I have already stepped through it."
}

func chat(system, user, reply string) []tokenizer.Message {
	var msgs []tokenizer.Message
	if system != "" {
		msgs = append(msgs, tokenizer.Message{Role: "system", Content: system})
	}
	return append(msgs, tokenizer.Message{Role: "user", Content: user}, tokenizer.Message{Role: "assistant", Content: reply})
}

// containsToken reports whether want appears in text as a whole word or number.
func containsToken(text, want string) bool {
	for _, f := range strings.FieldsFunc(text, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '.' }) {
		if strings.Trim(f, ".") == want {
			return true
		}
	}
	return false
}

// Correct reports whether a response states a checkable question's exact answer: for numbers, the answer is the
// only number it gives beyond those in the question; for names, the name appears.
func (q Question) Correct(response string) bool {
	if !q.Checkable() {
		return false
	}
	if !isNumber(q.Answer) {
		return strings.Contains(strings.ToLower(response), strings.ToLower(q.Answer))
	}
	given := map[string]bool{}
	for _, n := range numbers(q.Text) {
		given[n] = true
	}
	found := false
	for _, n := range numbers(response) {
		switch {
		case n == q.Answer:
			found = true
		case !given[n]:
			return false
		}
	}
	return found
}

func isNumber(s string) bool {
	ns := numbers(s)
	return len(ns) == 1 && ns[0] == s
}

// numbers lists the runs of digits in s.
func numbers(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return !unicode.IsDigit(r) })
}
