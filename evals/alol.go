package evals

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// ALoLEvalConfig sizes `keel eval alol`: the model's own rollouts in the drifting domains, rewarded by the axis,
// fine-tuned with every variant on the same data, steps and seeds.
type ALoLEvalConfig struct {
	Model         string             // the reference model folder
	Work          string             // rollouts and runs go here
	Domains       []string           // conversation domains of the rollouts (therapy, philosophy)
	Conversations int                // training rollouts per domain
	Turns         int                // turns per conversation
	HeldOut       int                // held-out conversations per domain, for the held-out reward and drift
	Temperature   float64            // rollout sampling
	Variants      []string           // algorithms to compare
	Seeds         []uint64           // each variant runs once per seed
	Steps         int                // max_steps of every run (before A-LoL's positive-fraction scaling)
	Batch         int                // examples per step
	LR            map[string]float64 // each variant's learning rate (when not tuned)
	TuneLR        []float64          // candidate learning rates: each variant takes the best by validation reward
	MaxPrompt     int                // prompt tokens kept (the conversation's tail)
	MaxResponse   int                // response tokens kept; also the length of every generated reply
	Eval          EvalConfig         // drift, role fidelity and capability of the reference and the a_lol model
	Device        string             // cpu, cuda or cuda:N
	Log           io.Writer
}

// DefaultALoLEval is the acceptance protocol, sized for a 2-core CPU.
func DefaultALoLEval() ALoLEvalConfig {
	ev := DefaultEval()
	ev.QuestionsPerPrompt, ev.Jailbreaks, ev.Domains = 4, 0, []string{"therapy", "philosophy"}
	lr := map[string]float64{}
	for _, v := range train.ALoLAlgorithms {
		lr[v] = 1e-4
	}
	return ALoLEvalConfig{Domains: []string{"therapy", "philosophy"}, Conversations: 40, Turns: 8, HeldOut: 8, Temperature: 0.7,
		Variants: train.ALoLAlgorithms, Seeds: []uint64{1, 2, 3}, Steps: 40, Batch: 8, LR: lr, MaxPrompt: 384, MaxResponse: 64, Eval: ev}
}

// VariantResult is one algorithm's held-out reward over the seeds.
type VariantResult struct {
	RewardMean float64   `json:"reward_mean"`
	RewardStd  float64   `json:"reward_std"`
	Rewards    []float64 `json:"rewards"` // per seed
	LR         float64   `json:"learning_rate"`
}

// ALoLEvalReport is what `keel eval alol --json` prints.
type ALoLEvalReport struct {
	DriftReduction   float64                  `json:"drift_reduction"`   // a_lol (first seed) vs the reference, therapy and philosophy
	RoleFidelity     float64                  `json:"role_fidelity"`     // a_lol, roles asked for explicitly
	CapabilityChange float64                  `json:"capability_change"` // a_lol vs the reference, signed fraction
	Variants         map[string]VariantResult `json:"variants"`
	ReferenceReward  float64                  `json:"reference_reward"` // the starting model's held-out reward
	DriftBefore      float64                  `json:"drift_before"`
	DriftAfter       float64                  `json:"drift_after"`
	CapabilityBefore float64                  `json:"capability_before"`
	CapabilityAfter  float64                  `json:"capability_after"`
	Examples         int                      `json:"examples"`
	PositiveFraction float64                  `json:"positive_fraction"` // of the a_lol runs' training sets (first seed)
	Seconds          map[string]float64       `json:"seconds"`           // per variant, mean wall time of a run
}

// EvalALoL runs the comparison. reward builds the reward for a loaded reference model (the axis reward).
func EvalALoL(ctx context.Context, rt *torch.Runtime, cfg ALoLEvalConfig, reward func(*model.LM) (train.Reward, error)) (*ALoLEvalReport, error) {
	logf := logTo(cfg.Log)
	ref, dev, r, err := openComparison(rt, cfg.Work, cfg.Model, cfg.Device, reward)
	if err != nil {
		return nil, err
	}
	defer ref.Close()
	chat := &model.Chatter{Ctx: ctx, LM: ref, BatchSize: 64, MaxTokens: cfg.MaxResponse, TopP: 0.9, Seed: 7}
	rng := rand.New(rand.NewPCG(11, 0xa101e))
	data := filepath.Join(cfg.Work, "rollouts.jsonl")
	// Rollouts are reused when the work folder holds ones made the same way (a rerun after an interruption).
	key, _ := json.Marshal(map[string]any{"model": cfg.Model, "domains": cfg.Domains, "conversations": cfg.Conversations,
		"turns": cfg.Turns, "temperature": cfg.Temperature, "max_response": cfg.MaxResponse})
	keyPath := filepath.Join(cfg.Work, "rollouts.key.json")
	n := 0
	if old, err := os.ReadFile(keyPath); err == nil && string(old) == string(key) {
		exs, err := train.LoadOfflineData(data, ref.Tokenizer, cfg.MaxPrompt, cfg.MaxResponse)
		if err != nil {
			return nil, err
		}
		n = len(exs)
		for i := 0; i < len(cfg.Domains)*cfg.Conversations; i++ { // the same draws as the run that wrote them
			if _, err := probes.ConversationTurns(cfg.Domains[i/cfg.Conversations], cfg.Turns, rng); err != nil {
				return nil, err
			}
		}
	} else {
		if n, err = writeRollouts(chat, data, cfg.Domains, cfg.Conversations, cfg.Turns, cfg.Temperature, rng); err != nil {
			return nil, err
		}
		if err := atomicfile.WriteFile(keyPath, key); err != nil {
			return nil, err
		}
	}
	logf("%d rollout turns from %d conversations per domain (%v): %s", n, cfg.Conversations, cfg.Domains, data)
	// The held-out conversations get a chatter of their own, so they are the same whether the rollouts were
	// made now or read back.
	held, err := heldOutPrompts(&model.Chatter{Ctx: ctx, LM: ref, BatchSize: 64, MaxTokens: cfg.MaxResponse, TopP: 0.9, Seed: 8}, cfg.Domains, cfg.HeldOut, cfg.Turns, cfg.Temperature, rng)
	if err != nil {
		return nil, err
	}
	rep := &ALoLEvalReport{Variants: map[string]VariantResult{}, Examples: n, Seconds: map[string]float64{}}
	if rep.ReferenceReward, err = heldOutReward(ctx, ref, r, held, cfg.MaxResponse); err != nil {
		return nil, err
	}
	logf("reference held-out reward %.4f over %d prompts", rep.ReferenceReward, len(held))
	var alolFinal string
	// fineTune runs one variant at one seed and learning rate; it returns the run and its best validation reward
	// (the tuning criterion: the held-out prompts are never used to choose).
	fineTune := func(v string, seed uint64, lr float64) (*train.Run, float64, error) {
		run, err := train.NewRun(filepath.Join(cfg.Work, "runs"), v)
		if err != nil {
			return nil, 0, err
		}
		c := train.ALoLConfig{ModelNameOrPath: cfg.Model, DatasetPath: data, Reward: r.Name(), Algorithm: v, LearningRate: lr,
			MaxSteps: cfg.Steps, PerDeviceTrainBatchSize: cfg.Batch, Seed: seed, MaxPromptLength: cfg.MaxPrompt,
			MaxResponseLength: cfg.MaxResponse, MaxValidation: 32, Device: cfg.Device, EvalSteps: max(1, cfg.Steps/2), SaveSteps: cfg.Steps + 1,
			ScoreCache: filepath.Join(cfg.Work, "scores.json")}
		if err := train.RunALoL(ctx, rt, run, c, r, train.Options{}); err != nil {
			return nil, 0, fmt.Errorf("%s seed %d lr %g: %w", v, seed, lr, err)
		}
		best := math.Inf(-1)
		ms, _ := run.ReadMetrics()
		for _, m := range ms {
			if vr, ok := m.Extra["val_reward"]; ok {
				best = max(best, vr)
			}
		}
		return run, best, nil
	}
	for _, v := range cfg.Variants {
		res := VariantResult{LR: cfg.LR[v]}
		var secs float64
		var tuned *train.Run
		if len(cfg.TuneLR) > 0 {
			// Each variant gets its own learning rate: the one whose first-seed run reaches the best validation
			// reward; that run counts as the first seed's.
			bestVal := math.Inf(-1)
			for _, lr := range cfg.TuneLR {
				start := time.Now()
				run, val, err := fineTune(v, cfg.Seeds[0], lr)
				if err != nil {
					return nil, err
				}
				logf("%-15s lr %.1e: best validation reward %.4f (%.0f s)", v, lr, val, time.Since(start).Seconds())
				if val > bestVal {
					bestVal, tuned, res.LR = val, run, lr
					secs = time.Since(start).Seconds()
				}
			}
		}
		for i, seed := range cfg.Seeds {
			start := time.Now()
			run := tuned
			if i > 0 || tuned == nil {
				var err error
				if run, _, err = fineTune(v, seed, res.LR); err != nil {
					return nil, err
				}
				secs += time.Since(start).Seconds()
			}
			st, _ := run.ReadState()
			lm, err := model.Load(rt, st.Final, model.Options{Device: dev})
			if err != nil {
				return nil, err
			}
			hr, err := heldOutReward(ctx, lm, r, held, cfg.MaxResponse)
			lm.Close()
			if err != nil {
				return nil, err
			}
			res.Rewards = append(res.Rewards, hr)
			logf("%-15s seed %d lr %.1e: held-out reward %.4f (%d steps)", v, seed, res.LR, hr, st.Step)
			if v == "a_lol" && alolFinal == "" {
				alolFinal = st.Final
				if adv, err := train.ReadAdvantages(filepath.Join(run.Dir, "advantages.jsonl")); err == nil {
					pos := 0
					for _, a := range adv {
						if a.Advantage > 0 {
							pos++
						}
					}
					rep.PositiveFraction = float64(pos) / float64(max(1, len(adv)))
				}
			}
		}
		res.RewardMean, res.RewardStd = train.MeanStd(res.Rewards)
		rep.Variants[v] = res
		rep.Seconds[v] = secs / float64(len(cfg.Seeds))
	}
	if alolFinal != "" {
		before, after, err := beforeAfter(ctx, rt, dev, ref, alolFinal, cfg.Eval)
		if err != nil {
			return nil, err
		}
		rep.DriftBefore, rep.DriftAfter = meanDrift(before, cfg.Eval.Domains), meanDrift(after, cfg.Eval.Domains)
		rep.DriftReduction = reduction(rep.DriftBefore, rep.DriftAfter)
		rep.RoleFidelity = after.RoleFidelity
		rep.CapabilityBefore, rep.CapabilityAfter = before.Capability, after.Capability
		rep.CapabilityChange = -reduction(before.Capability, after.Capability)
		logf("a_lol: drift %.3f -> %.3f, role fidelity %.3f, capability %.3f -> %.3f", rep.DriftBefore, rep.DriftAfter, rep.RoleFidelity, rep.CapabilityBefore, rep.CapabilityAfter)
	}
	raw, _ := json.MarshalIndent(rep, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(cfg.Work, "alol_eval.json"), append(raw, '\n')); err != nil {
		return nil, err
	}
	return rep, nil
}

// writeRollouts holds conversations with the model in each domain and writes every assistant turn as an
// offline example (the conversation so far, then the reply). It returns the number of examples.
func writeRollouts(chat *model.Chatter, path string, domains []string, conversations, turns int, temperature float64, rng *rand.Rand) (int, error) {
	var data bytes.Buffer
	enc := json.NewEncoder(&data)
	n := 0
	for _, d := range domains {
		convs, err := Converse(chat, d, conversations, turns, temperature, &probes.ScriptedUsers{Rng: rng, Turns: turns})
		if err != nil {
			return 0, err
		}
		for _, c := range convs {
			for t := 1; t < len(c); t += 2 {
				if err := enc.Encode(map[string]any{"messages": c[:t+1], "domain": d}); err != nil {
					return 0, err
				}
				n++
			}
		}
	}
	return n, atomicfile.WriteFile(path, data.Bytes())
}

// heldOutPrompts are the contexts of fresh conversations (a different draw from the training rollouts), one per
// turn: what a fine-tuned model is asked to answer for the held-out reward.
func heldOutPrompts(chat *model.Chatter, domains []string, conversations, turns int, temperature float64, rng *rand.Rand) ([][]tokenizer.Message, error) {
	var out [][]tokenizer.Message
	for _, d := range domains {
		convs, err := Converse(chat, d, conversations, turns, temperature, &probes.ScriptedUsers{Rng: rng, Turns: turns})
		if err != nil {
			return nil, err
		}
		for _, c := range convs {
			for t := 0; t < len(c); t += 2 {
				out = append(out, c[:t+1])
			}
		}
	}
	return out, nil
}

// heldOutReward is the mean reward of a model's greedy replies to the held-out prompts.
func heldOutReward(ctx context.Context, lm *model.LM, r train.Reward, prompts [][]tokenizer.Message, maxTokens int) (float64, error) {
	samples := make([]train.Sample, len(prompts))
	for i, p := range prompts {
		samples[i] = train.Sample{Messages: p}
	}
	return train.GreedyReward(ctx, &model.Chatter{Ctx: ctx, LM: lm, BatchSize: 64, MaxTokens: maxTokens}, r, samples)
}

func meanDrift(rep *EvalReport, domains []string) float64 {
	var sum float64
	n := 0
	for _, d := range domains {
		for _, r := range rep.Drift[d] {
			sum += r
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// beforeAfter measures the reference and a fine-tuned model with the persona evaluation on the same seeds.
func beforeAfter(ctx context.Context, rt *torch.Runtime, dev torch.Device, ref *model.LM, tuned string, cfg EvalConfig) (*EvalReport, *EvalReport, error) {
	personas, err := probes.LoadPersonas()
	if err != nil {
		return nil, nil, err
	}
	before, err := EvalPersona(ctx, ref, personas, cfg)
	if err != nil {
		return nil, nil, err
	}
	lm, err := model.Load(rt, tuned, model.Options{Device: dev})
	if err != nil {
		return nil, nil, err
	}
	defer lm.Close()
	after, err := EvalPersona(ctx, lm, personas, cfg)
	return before, after, err
}

// logTo writes progress lines to w (nowhere when w is nil).
func logTo(w io.Writer) func(format string, a ...any) {
	return func(format string, a ...any) {
		if w != nil {
			fmt.Fprintf(w, format+"\n", a...)
		}
	}
}

// openComparison makes the work folder and loads the reference model on the device with its reward.
func openComparison(rt *torch.Runtime, work, modelDir, device string, reward func(*model.LM) (train.Reward, error)) (*model.LM, torch.Device, train.Reward, error) {
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, torch.Device{}, nil, err
	}
	dev, err := torch.ParseDevice(device)
	if err != nil {
		return nil, torch.Device{}, nil, err
	}
	ref, err := model.Load(rt, modelDir, model.Options{Device: dev})
	if err != nil {
		return nil, torch.Device{}, nil, err
	}
	r, err := reward(ref)
	if err != nil {
		ref.Close()
		return nil, torch.Device{}, nil, err
	}
	return ref, dev, r, nil
}
