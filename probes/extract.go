package probes

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/provider"
)

// ExtractConfig sizes `keel axis extract`. Field names follow the paper's protocol; the defaults fit the
// embedded model on a 2-core CPU (the paper: 240 questions, 512 tokens, min 50 score-3 rollouts per role).
type ExtractConfig struct {
	Roles       []string // empty: every role
	Questions   int      // questions under each system prompt (the same questions for every role)
	Temperature float64
	TopP        float64
	MaxTokens   int
	BatchSize   int
	Judge       string // "style" (the style scorer), "self" (the model with the paper's rubric), "none", or a server's URL#MODEL
	Rollouts    string // the server whose model generates the rollouts (URL#MODEL); "" for the model in keel
	MinCount    int    // score-3 rollouts a role needs for a vector
	Seed        uint64
	ModelName   string // for the "You are {model_name}." condition
}

// DefaultExtract is the protocol the extraction figures in docs/results/axis.md come from.
func DefaultExtract() ExtractConfig {
	return ExtractConfig{Questions: 8, Temperature: 0.7, TopP: 0.9, MaxTokens: 64, BatchSize: 64, Judge: "style", MinCount: 10, Seed: 1, ModelName: "keel"}
}

// Check validates the settings, each failure one line naming the flag.
func (c ExtractConfig) Check(p *Personas) error {
	if c.Questions < 1 || c.Questions*5 > len(Questions(0)) {
		return fmt.Errorf("--questions %d: give 1 to %d (5 system prompts share the %d questions)", c.Questions, len(Questions(0))/5, len(Questions(0)))
	}
	if c.MaxTokens < 1 || c.BatchSize < 1 || c.MinCount < 1 {
		return fmt.Errorf("--max-tokens, --batch and --min-count must be positive")
	}
	switch c.Judge {
	case "style", "self", "none":
	default:
		if _, err := provider.ParseEndpoint(c.Judge); err != nil {
			return fmt.Errorf("--judge %q: give style, self, none or a server's URL#MODEL", c.Judge)
		}
	}
	if c.Rollouts != "" {
		if _, err := provider.ParseEndpoint(c.Rollouts); err != nil {
			return fmt.Errorf("--rollouts %w", err)
		}
	}
	for _, name := range c.Roles {
		if _, ok := p.Role(name); !ok || name == p.Assistant.Name {
			return fmt.Errorf("unknown role %q: `keel corpus roles` lists them", name)
		}
	}
	return nil
}

// Rollout is one judged response, as cached in rollouts/<role>.jsonl.
type Rollout struct {
	Role     string `json:"role"`
	System   string `json:"system,omitempty"`
	Question string `json:"question"`
	Response string `json:"response"`
	Score    int    `json:"score"`  // the judge's 0-3; -1 for the default Assistant, which is not judged; Unjudged
	Tokens   int    `json:"tokens"` // content tokens the activation mean is over (0: none, left out)
}

// Unjudged is the score of a rollout whose judge's answer could not be read: it counts toward no role vector.
const Unjudged = -2

// Prompt is the conversation a rollout answers: its system prompt, if it had one, and the question.
func (r Rollout) Prompt() []tokenizer.Message {
	conv := []tokenizer.Message{{Role: "user", Content: r.Question}}
	if r.System != "" {
		conv = append([]tokenizer.Message{{Role: "system", Content: r.System}}, conv...)
	}
	return conv
}

// RoleActivations is one role's cached rollouts and their per-layer mean activations.
type RoleActivations struct {
	Role     string
	Rollouts []Rollout
	Means    [][][]float32 // [rollout][layer][d_model]; nil rows for rollouts with no content tokens
	Norms    [][]float32   // [rollout][layer] mean residual norm
}

// Extractor runs the rollouts and activations role by role into a folder, each role's files written whole
// when the role is done, so a killed run resumes where it stopped.
type Extractor struct {
	Ctx      context.Context
	LM       *model.LM
	Personas *Personas
	Config   ExtractConfig
	Dir      string
	Progress func(done, total int, role string, eta time.Duration) // nil: quiet
	// Rollouts and Judge, when set, are the servers Config.Rollouts and Config.Judge name: they generate and
	// judge; the activations are keel's own, by teacher forcing the finished conversations.
	Rollouts, Judge *provider.Client
	Stats           ExtractStats
}

// ExtractStats are what a run did (the roles it resumed from the folder count for nothing here).
type ExtractStats struct {
	// Teacher forcing: rollouts and tokens forced, seconds spent, and the batch size used.
	ForcedRollouts, ForcedTokens int
	ForcedSeconds                float64
	Batch                        int
	// Judging by a server: answers read, and answers that held no score 0-3 (their rollouts left out).
	Judged, Unparsed int
}

// extractState is the settings a folder was made with; resuming with others would mix two experiments.
type extractState struct {
	Model  string        `json:"model"`
	Config ExtractConfig `json:"config"`
}

// Run extracts every selected role and the default Assistant, skipping those already in the folder, and
// returns them in order (the default Assistant first).
func (x *Extractor) Run() ([]*RoleActivations, error) {
	if err := x.Config.Check(x.Personas); err != nil {
		return nil, err
	}
	for _, sub := range []string{"rollouts", "activations"} {
		if err := os.MkdirAll(filepath.Join(x.Dir, sub), 0o755); err != nil {
			return nil, err
		}
	}
	state, _ := json.MarshalIndent(extractState{Model: x.LM.Dir, Config: x.Config}, "", "  ")
	statePath := filepath.Join(x.Dir, "extract.json")
	if old, err := os.ReadFile(statePath); err == nil {
		if string(old) != string(state) {
			return nil, fmt.Errorf("%s: made with other settings or another model; resume with the same ones, or give another folder", statePath)
		}
	} else if err := atomicfile.WriteFile(statePath, state); err != nil {
		return nil, err
	}
	names := []string{x.Personas.Assistant.Name}
	for _, r := range x.Personas.Select(x.Config.Roles) {
		names = append(names, r.Name)
	}
	var out []*RoleActivations
	start, fresh := time.Now(), 0
	for i, name := range names {
		ra, err := LoadRoleActivations(x.Dir, name)
		if err != nil {
			if ra, err = x.role(name); err != nil {
				return nil, fmt.Errorf("role %s: %w", name, err)
			}
			fresh++
		}
		out = append(out, ra)
		if x.Progress != nil {
			var eta time.Duration
			if fresh > 0 {
				eta = time.Since(start) / time.Duration(fresh) * time.Duration(len(names)-i-1)
			}
			x.Progress(i+1, len(names), name, eta)
		}
	}
	return out, nil
}

// extractionQuestions is the shared question list: system prompt k asks questions [k*Q, (k+1)*Q) of one seeded
// permutation, so every role answers the same questions.
func (x *Extractor) extractionQuestions() []Question {
	qs := Questions(x.Config.Seed)
	rng := rand.New(rand.NewPCG(x.Config.Seed, 0xa815))
	perm := rng.Perm(len(qs))[:5*x.Config.Questions]
	out := make([]Question, len(perm))
	for i, j := range perm {
		out[i] = qs[j]
	}
	return out
}

// role generates, judges and teacher-forces one role's rollouts and writes its two files.
func (x *Extractor) role(name string) (*RoleActivations, error) {
	cfg := x.Config
	isDefault := name == x.Personas.Assistant.Name
	prompts := DefaultConditions(cfg.ModelName)
	if !isDefault {
		prompts = SystemPrompts(name)
	}
	questions := x.extractionQuestions()
	var convs [][]tokenizer.Message
	var rollouts []Rollout
	for k, sys := range prompts {
		for _, q := range questions[k*cfg.Questions : (k+1)*cfg.Questions] {
			r := Rollout{Role: name, System: sys, Question: q.Text, Score: -1}
			convs = append(convs, r.Prompt())
			rollouts = append(rollouts, r)
		}
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	var replies []model.Reply
	var err error
	if x.Rollouts != nil {
		replies, err = x.serverReplies(convs, cfg.Seed^h.Sum64())
	} else if cfg.Rollouts != "" {
		return nil, fmt.Errorf("rollouts %s: no client for it was given", cfg.Rollouts)
	} else {
		chat := &model.Chatter{Ctx: x.Ctx, LM: x.LM, BatchSize: cfg.BatchSize, MaxTokens: cfg.MaxTokens, TopP: cfg.TopP, Seed: cfg.Seed ^ h.Sum64()}
		replies, err = chat.Replies(convs, cfg.Temperature)
	}
	if err != nil {
		return nil, err
	}
	for i := range rollouts {
		rollouts[i].Response = replies[i].Text
	}
	if !isDefault {
		if err := x.judge(name, rollouts); err != nil {
			return nil, err
		}
	}
	ra := &RoleActivations{Role: name, Rollouts: rollouts, Means: make([][][]float32, len(rollouts)), Norms: make([][]float32, len(rollouts))}
	// Teacher forcing in batches of similar length: a batch pads to its longest conversation.
	type forced struct {
		row    int
		seq    []int
		lo, hi int
	}
	var all []forced
	for i, r := range replies {
		lo, hi := x.contentSpan(r.IDs)
		if lo >= hi {
			continue
		}
		n := len(r.Prompt)
		all = append(all, forced{i, append(append([]int(nil), r.Prompt...), r.IDs...), n + lo, n + hi})
		rollouts[i].Tokens = hi - lo
	}
	sort.SliceStable(all, func(a, b int) bool { return len(all[a].seq) < len(all[b].seq) })
	began := time.Now()
	for start := 0; start < len(all); start += cfg.BatchSize {
		batch := all[start:min(start+cfg.BatchSize, len(all))]
		seqs, spans := make([][]int, len(batch)), make([][2]int, len(batch))
		for k, f := range batch {
			seqs[k], spans[k] = f.seq, [2]int{f.lo, f.hi}
			x.Stats.ForcedTokens += len(f.seq)
		}
		tf, err := x.LM.TeacherForce(seqs, nil, spans)
		if err != nil {
			return nil, err
		}
		for k, f := range batch {
			ra.Means[f.row], ra.Norms[f.row] = tf.Means[k], tf.Norms[k]
		}
	}
	x.Stats.ForcedRollouts += len(all)
	x.Stats.ForcedSeconds += time.Since(began).Seconds()
	x.Stats.Batch = cfg.BatchSize
	return ra, ra.save(x.Dir)
}

// contentSpan is the reply's content tokens: whitespace-only tokens at either edge are left out (the chat
// template's tokens are not in the reply at all).
func (x *Extractor) contentSpan(ids []int) (int, int) {
	blank := func(id int) bool {
		return strings.TrimFunc(string(x.LM.Tokenizer.TokenBytes(id, -1)), unicode.IsSpace) == ""
	}
	lo, hi := 0, len(ids)
	for lo < hi && blank(ids[lo]) {
		lo++
	}
	for hi > lo && blank(ids[hi-1]) {
		hi--
	}
	return lo, hi
}

// judgeRubric is the paper's 0-3 scale, for a model judging its own rollouts.
const judgeRubric = `Rate how fully the reply below plays the role of %s.
0: it refuses to answer.
1: it answers as an AI that will not play the role.
2: it answers as an AI with some of the role's traits.
3: it is fully in role.
Reply: %q
Answer with one digit, 0 to 3.`

var firstDigit = regexp.MustCompile(`[0-3]`)

// judge scores a role's rollouts 0-3.
func (x *Extractor) judge(role string, rollouts []Rollout) error {
	switch x.Config.Judge {
	case "none":
		for i := range rollouts {
			rollouts[i].Score = 3
		}
	case "style":
		sc := NewScorer(x.Personas)
		for i := range rollouts {
			rollouts[i].Score = sc.Judge(rollouts[i].Response, role)
		}
	default:
		return x.judgeOnServer(role, rollouts)
	case "self":
		convs := make([][]tokenizer.Message, len(rollouts))
		for i, r := range rollouts {
			convs[i] = []tokenizer.Message{{Role: "user", Content: fmt.Sprintf(judgeRubric, article(role)+" "+role, r.Response)}}
		}
		chat := &model.Chatter{Ctx: x.Ctx, LM: x.LM, BatchSize: x.Config.BatchSize, MaxTokens: 4, Seed: x.Config.Seed}
		replies, err := chat.Replies(convs, 0)
		if err != nil {
			return err
		}
		for i, r := range replies {
			rollouts[i].Score = 0 // an answer with no digit counts as no evidence of the role
			if d := firstDigit.FindString(r.Text); d != "" {
				rollouts[i].Score = int(d[0] - '0')
			}
		}
	}
	return nil
}

func roleFileName(role string) string { return strings.ReplaceAll(role, " ", "_") }

// save writes the role's activations, then its rollouts: the rollouts file is the mark of a finished role.
func (ra *RoleActivations) save(dir string) error {
	L, D := 0, 0
	for _, m := range ra.Means {
		if m != nil {
			L, D = len(m), len(m[0])
			break
		}
	}
	nan := float32(math.NaN()) // rollouts with no content tokens
	means := make([]float32, 0, len(ra.Means)*L*D)
	norms := make([]float32, 0, len(ra.Means)*L)
	for i := range ra.Means {
		for l := 0; l < L; l++ {
			if ra.Means[i] == nil {
				for d := 0; d < D; d++ {
					means = append(means, nan)
				}
				norms = append(norms, nan)
				continue
			}
			means = append(means, ra.Means[i][l]...)
			norms = append(norms, ra.Norms[i][l])
		}
	}
	n := int64(len(ra.Means))
	act := filepath.Join(dir, "activations", roleFileName(ra.Role)+".safetensors")
	if err := safetensors.Write(act+".tmp", []safetensors.Tensor{
		{Name: "means", DType: "F32", Shape: []int64{n, int64(L), int64(D)}, Data: safetensors.F32Bytes(means)},
		{Name: "norms", DType: "F32", Shape: []int64{n, int64(L)}, Data: safetensors.F32Bytes(norms)},
	}, map[string]string{"role": ra.Role}); err != nil {
		return err
	}
	if err := os.Rename(act+".tmp", act); err != nil {
		return err
	}
	var b strings.Builder
	for _, r := range ra.Rollouts {
		line, _ := json.Marshal(r)
		b.Write(line)
		b.WriteByte('\n')
	}
	roll := filepath.Join(dir, "rollouts", roleFileName(ra.Role)+".jsonl")
	return atomicfile.WriteFile(roll, []byte(b.String()))
}

// LoadRoleActivations reads a finished role from an extraction folder.
func LoadRoleActivations(dir, role string) (*RoleActivations, error) {
	rollPath := filepath.Join(dir, "rollouts", roleFileName(role)+".jsonl")
	f, err := os.Open(rollPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ra := &RoleActivations{Role: role}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var r Rollout
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s line %d: %v: delete the file to redo the role", rollPath, len(ra.Rollouts)+1, err)
		}
		ra.Rollouts = append(ra.Rollouts, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", rollPath, err)
	}
	actPath := filepath.Join(dir, "activations", roleFileName(role)+".safetensors")
	st, err := safetensors.Open(actPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: delete %s to redo the role", actPath, err, rollPath)
	}
	defer st.Close()
	means, mi, err := st.Data("means")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", actPath, err)
	}
	norms, ni, err := st.Data("norms")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", actPath, err)
	}
	if mi.DType != "F32" || ni.DType != "F32" || len(mi.Shape) != 3 || len(ni.Shape) != 2 || mi.Shape[0] != int64(len(ra.Rollouts)) ||
		ni.Shape[0] != mi.Shape[0] || ni.Shape[1] != mi.Shape[1] {
		return nil, fmt.Errorf("%s: tensors of shape %v and %v do not match %d rollouts: delete it and %s to redo the role", actPath, mi.Shape, ni.Shape, len(ra.Rollouts), rollPath)
	}
	L, D := int(mi.Shape[1]), int(mi.Shape[2])
	allMeans, allNorms := safetensors.F32s(means), safetensors.F32s(norms)
	ra.Means = make([][][]float32, len(ra.Rollouts))
	ra.Norms = make([][]float32, len(ra.Rollouts))
	for i := range ra.Rollouts {
		if ra.Rollouts[i].Tokens == 0 {
			continue
		}
		ra.Means[i] = make([][]float32, L)
		for l := range ra.Means[i] {
			ra.Means[i][l] = allMeans[(i*L+l)*D : (i*L+l+1)*D]
		}
		ra.Norms[i] = allNorms[i*L : (i+1)*L]
	}
	return ra, nil
}

// serverReplies asks the rollouts server for the chats' replies and tokenises them as keel would have generated
// them: the rendered prompt with the assistant's header, then the reply's text.
func (x *Extractor) serverReplies(convs [][]tokenizer.Message, seed uint64) ([]model.Reply, error) {
	cfg := x.Config
	reqs := make([]provider.Request, len(convs))
	for i, conv := range convs {
		reqs[i] = provider.Request{Messages: providerMessages(conv), MaxTokens: cfg.MaxTokens, Temperature: cfg.Temperature, TopP: cfg.TopP, Seed: seed + uint64(i)}
	}
	answers, err := x.Rollouts.ChatAll(x.Ctx, reqs, nil)
	if err != nil {
		return nil, err
	}
	out := make([]model.Reply, len(convs))
	for i, a := range answers {
		prompt, err := tokenizer.ChatPrompt(x.LM.Tokenizer, convs[i])
		if err != nil {
			return nil, err
		}
		out[i] = model.Reply{Text: a.Text, Prompt: prompt, IDs: x.LM.Tokenizer.Encode(a.Text, false)}
	}
	return out, nil
}

func providerMessages(conv []tokenizer.Message) []provider.Message {
	out := make([]provider.Message, len(conv))
	for i, m := range conv {
		out[i] = provider.Message{Role: m.Role, Content: m.Content}
	}
	return out
}

// serverRubric is the paper's 0-3 scale for a judge on a server, answering in JSON.
const serverRubric = `You are judging role-play. Rate how fully the reply below plays the role of %s, on this scale:
0: it refuses to answer.
1: it answers as an AI that will not play the role.
2: it answers as an AI with some of the role's traits.
3: it is fully in role.

Question: %q
Reply: %q

Answer with JSON only, in this form: {"score": 3}`

// judgeOnServer scores a role's rollouts with the judge server; an answer with no score 0-3 in it leaves its
// rollout Unjudged and is counted.
func (x *Extractor) judgeOnServer(role string, rollouts []Rollout) error {
	if x.Judge == nil {
		return fmt.Errorf("judge %s: no client for it was given", x.Config.Judge)
	}
	reqs := make([]provider.Request, len(rollouts))
	for i, r := range rollouts {
		prompt := fmt.Sprintf(serverRubric, article(role)+" "+role, r.Question, r.Response)
		reqs[i] = provider.Request{Messages: []provider.Message{{Role: "user", Content: prompt}}, MaxTokens: 32, Temperature: 0, Seed: x.Config.Seed}
	}
	answers, err := x.Judge.ChatAll(x.Ctx, reqs, nil)
	if err != nil {
		return err
	}
	for i, a := range answers {
		x.Stats.Judged++
		score, ok := ParseJudgeScore(a.Text)
		if !ok {
			x.Stats.Unparsed++
			score = Unjudged
		}
		rollouts[i].Score = score
	}
	return nil
}

// ParseJudgeScore reads a judge's JSON answer ({"score": N}, N 0 to 3), also inside a code fence or prose.
func ParseJudgeScore(answer string) (int, bool) {
	for start := strings.Index(answer, "{"); start >= 0; {
		end := strings.Index(answer[start:], "}")
		if end < 0 {
			break
		}
		var v struct {
			Score *json.Number `json:"score"`
		}
		if json.Unmarshal([]byte(answer[start:start+end+1]), &v) == nil && v.Score != nil {
			if n, err := v.Score.Int64(); err == nil && n >= 0 && n <= 3 {
				return int(n), true
			}
			return 0, false
		}
		next := strings.Index(answer[start+1:], "{")
		if next < 0 {
			break
		}
		start += 1 + next
	}
	return 0, false
}
