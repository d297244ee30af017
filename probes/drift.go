package probes

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/provider"
	"github.com/keel-lab/keel/steer"
)

// DriftConfig sizes `keel drift`, the paper's drift experiment (100 conversations of up to 15 turns per domain
// there; fewer and shorter by default here, for a CPU).
type DriftConfig struct {
	Domains          []string
	Conversations    int
	Turns            int
	Layer            int // analysis layer; -1: n_layers // 2
	MinConversations int // turn positions with fewer conversations are left out
	Temperature      float64
	TopP             float64
	MaxTokens        int
	BatchSize        int
	Seed             uint64
	User             string // the server whose model plays the user (URL#MODEL); "": the domains' scripted turns
}

// DefaultDrift is the protocol of the drift figures in docs/results/axis.md.
func DefaultDrift() DriftConfig {
	return DriftConfig{Domains: Domains, Conversations: 20, Turns: 8, Layer: -1, MinConversations: 10, Temperature: 0.7, TopP: 0.9, MaxTokens: 96, BatchSize: 64, Seed: 1}
}

// Check validates the settings, each failure one line naming the flag.
func (c DriftConfig) Check() error {
	for _, d := range c.Domains {
		if !slices.Contains(Domains, d) {
			return fmt.Errorf("--domains: unknown domain %q, give some of %v", d, Domains)
		}
	}
	if len(c.Domains) == 0 {
		return fmt.Errorf("--domains: give at least one of %v", Domains)
	}
	most := 10 // the scripted arcs' length
	if c.User != "" {
		if _, err := provider.ParseEndpoint(c.User); err != nil {
			return fmt.Errorf("--user %w", err)
		}
		most = 30
	}
	if c.Conversations < 1 || c.Turns < 1 || c.Turns > most || c.MaxTokens < 1 || c.BatchSize < 1 {
		return fmt.Errorf("--conversations, --max-tokens and --batch must be positive and --turns 1 to %d", most)
	}
	return nil
}

// DriftCurve is one domain's result: per turn position, the mean projection of the response tokens on the axis
// (NaN where fewer than MinConversations reach it) and the share of replies the style scorer calls drifted.
type DriftCurve struct {
	Domain     string    `json:"domain"`
	Projection []float64 `json:"projection"`
	DriftRate  []float64 `json:"drift_rate"`
	N          []int     `json:"conversations"`
	Sample     string    `json:"sample"`
}

// MeasureDrift holds conversations with no system prompt under the given interventions (nil: none) and
// measures where each reply sits on the axis at the analysis layer. The user's turns are the domain's scripted
// ones (users nil), or users' (a model on the server cfg.User names, playing each domain's user).
func MeasureDrift(ctx context.Context, lm *model.LM, p *Personas, axis *steer.VectorFile, hooks *model.Hooks, cfg DriftConfig, users Users) ([]DriftCurve, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	layer := cfg.Layer
	if layer < 0 {
		layer = lm.NumLayers() / 2
	}
	u, ok := axis.Layers[layer]
	if !ok {
		return nil, fmt.Errorf("--layer %d: the axis has vectors at layers %v", layer, axis.LayerList())
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xd21f))
	if users == nil {
		if cfg.User != "" {
			return nil, fmt.Errorf("--user %s: no client for it was given", cfg.User)
		}
		users = &ScriptedUsers{Rng: rng, Turns: cfg.Turns}
	}
	sc := NewScorer(p)
	chat := &model.Chatter{Ctx: ctx, LM: lm, BatchSize: cfg.BatchSize, MaxTokens: cfg.MaxTokens, TopP: cfg.TopP, Seed: cfg.Seed, Hooks: hooks}
	var out []DriftCurve
	for _, domain := range cfg.Domains {
		convs := make([][]tokenizer.Message, cfg.Conversations)
		curve := DriftCurve{Domain: domain, Projection: make([]float64, cfg.Turns), DriftRate: make([]float64, cfg.Turns), N: make([]int, cfg.Turns)}
		for t := 0; t < cfg.Turns; t++ {
			next, err := users.Next(ctx, domain, convs)
			if err != nil {
				return nil, err
			}
			for c := range convs {
				convs[c] = append(convs[c], tokenizer.Message{Role: "user", Content: next[c]})
			}
			replies, err := chat.Replies(convs, cfg.Temperature)
			if err != nil {
				return nil, err
			}
			proj, err := replyProjections(lm, hooks, replies, layer, u, cfg.BatchSize)
			if err != nil {
				return nil, err
			}
			var sum float64
			n, drifted := 0, 0
			for c, r := range replies {
				convs[c] = append(convs[c], tokenizer.Message{Role: "assistant", Content: r.Text})
				if sc.Drifted(r.Text) {
					drifted++
				}
				if !math.IsNaN(proj[c]) {
					sum += proj[c]
					n++
				}
			}
			curve.N[t] = n
			curve.DriftRate[t] = float64(drifted) / float64(len(replies))
			curve.Projection[t] = math.NaN()
			if n >= cfg.MinConversations && n > 0 {
				curve.Projection[t] = sum / float64(n)
			}
		}
		curve.Sample = convs[0][len(convs[0])-1].Content
		out = append(out, curve)
	}
	return out, nil
}

// replyProjections teacher-forces each reply after its prompt (under the same interventions, so a capped
// reply is measured capped) and projects the mean over its tokens at the layer onto u; NaN for empty replies.
func replyProjections(lm *model.LM, hooks *model.Hooks, replies []model.Reply, layer int, u []float32, batch int) ([]float64, error) {
	out := make([]float64, len(replies))
	for start := 0; start < len(replies); start += batch {
		end := min(start+batch, len(replies))
		var seqs [][]int
		var spans [][2]int
		var rows []int
		for i := start; i < end; i++ {
			out[i] = math.NaN()
			if len(replies[i].IDs) == 0 {
				continue
			}
			n := len(replies[i].Prompt)
			seqs = append(seqs, append(append([]int(nil), replies[i].Prompt...), replies[i].IDs...))
			spans = append(spans, [2]int{n, n + len(replies[i].IDs)})
			rows = append(rows, i)
		}
		if len(seqs) == 0 {
			continue
		}
		tf, err := lm.TeacherForce(seqs, hooks, spans)
		if err != nil {
			return nil, err
		}
		for j, i := range rows {
			out[i] = steer.Dot(tf.Means[j][layer], u)
		}
	}
	return out, nil
}

// MeanRate is the mean of a curve's drift rates over every turn.
func (d DriftCurve) MeanRate() float64 {
	var s float64
	for _, r := range d.DriftRate {
		s += r
	}
	return s / float64(max(1, len(d.DriftRate)))
}
