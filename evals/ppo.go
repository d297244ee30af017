package evals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// PPOEvalConfig sizes `keel eval ppo`: PPO with the axis reward on the model's own therapy and philosophy
// conversations, then a deliberately unstable run (no KL penalty, a large learning rate) that the collapse
// monitor must stop.
type PPOEvalConfig struct {
	Model         string
	Work          string
	Device        string
	Domains       []string
	Conversations int     // prompt conversations per domain (each turn's context is a prompt)
	Turns         int     // turns per conversation
	Temperature   float64 // the prompt conversations' sampling
	PPO           train.PPOConfig
	Unstable      train.PPOConfig // the settings that should collapse
	// ALoL is the A-LoL run set beside PPO on the same prompts (the reference's replies in them are its offline
	// data), reward and wall-clock budget (the PPO run's); an empty Algorithm leaves it out.
	ALoL train.ALoLConfig
	// HeldOut conversations per domain, a draw of their own, give both methods' held-out reward.
	HeldOut int
	Eval    EvalConfig
	Log     io.Writer
}

// DefaultPPOEval is the acceptance protocol, sized for about 20 minutes of PPO on a 2-core CPU.
func DefaultPPOEval() PPOEvalConfig {
	ev := DefaultEval()
	ev.QuestionsPerPrompt, ev.Jailbreaks, ev.Domains = 4, 0, []string{"therapy", "philosophy"}
	stable := train.PPOConfig{LearningRate: 1e-4, MaxSteps: 20, RolloutBatchSize: 32, MiniBatchSize: 8, NumPPOEpochs: 1, KLCoef: 0.05,
		MaxNewTokens: 64, MaxPromptLength: 384, RewardNormalize: true, CriticWarmupSteps: 2, KLTarget: 8, KLStopSteps: 3, Seed: 1, SaveSteps: 5}
	unstable := stable
	unstable.LearningRate, unstable.KLCoef, unstable.MaxSteps, unstable.CriticWarmupSteps, unstable.NumPPOEpochs = 1e-3, 0, 10, 0, 2
	// A-LoL at the learning rate its own comparison (`keel eval alol`) tunes to; the step count is a ceiling the
	// budget cuts.
	alol := train.ALoLConfig{Algorithm: "a_lol", LearningRate: 3e-4, MaxSteps: 2000, PerDeviceTrainBatchSize: 8, MaxPromptLength: 384,
		MaxResponseLength: 64, MaxValidation: 32, EvalSteps: 25, SaveSteps: 100, Seed: 1}
	return PPOEvalConfig{Domains: []string{"therapy", "philosophy"}, Conversations: 24, Turns: 8, Temperature: 0.7, PPO: stable,
		Unstable: unstable, ALoL: alol, HeldOut: 10, Eval: ev}
}

// PPOEvalReport is what `keel eval ppo --json` prints.
type PPOEvalReport struct {
	DriftReduction   float64 `json:"drift_reduction"`
	RewardStart      float64 `json:"reward_start"` // mean reward of the first iteration's rollouts
	RewardEnd        float64 `json:"reward_end"`   // and of the last
	RefKLMax         float64 `json:"ref_kl_max"`
	KLTarget         float64 `json:"kl_target"`
	CapabilityChange float64 `json:"capability_change"`
	CollapseStop     bool    `json:"collapse_stop"`   // the unstable run was stopped by the monitor
	CollapseReason   string  `json:"collapse_reason"` // what it said
	DriftBefore      float64 `json:"drift_before"`
	DriftAfter       float64 `json:"drift_after"`
	RoleFidelity     float64 `json:"role_fidelity"`
	Prompts          int     `json:"prompts"`
	Seconds          float64 `json:"seconds"` // the PPO run's wall time
	// ReferenceHeldOut is the starting model's held-out reward; SameBudget puts PPO and A-LoL side by side.
	ReferenceHeldOut float64      `json:"reference_held_out_reward"`
	SameBudget       []SameBudget `json:"same_budget,omitempty"`
}

// SameBudget is one method's figures in the side-by-side at an equal wall-clock budget.
type SameBudget struct {
	Method           string  `json:"method"`
	Seconds          float64 `json:"seconds"` // the run's wall time, setup included
	Steps            int     `json:"steps"`   // iterations (PPO) or optimizer steps (A-LoL) done in it
	HeldOutReward    float64 `json:"held_out_reward"`
	DriftAfter       float64 `json:"drift_after"`
	DriftReduction   float64 `json:"drift_reduction"`
	CapabilityChange float64 `json:"capability_change"`
	RoleFidelity     float64 `json:"role_fidelity"`
}

// EvalPPO runs the comparison. reward builds the reward for the loaded reference (the axis reward).
func EvalPPO(ctx context.Context, rt *torch.Runtime, cfg PPOEvalConfig, reward func(*model.LM) (train.Reward, error)) (*PPOEvalReport, error) {
	logf := logTo(cfg.Log)
	ref, dev, r, err := openComparison(rt, cfg.Work, cfg.Model, cfg.Device, reward)
	if err != nil {
		return nil, err
	}
	defer ref.Close()
	chat := &model.Chatter{Ctx: ctx, LM: ref, BatchSize: 64, MaxTokens: cfg.PPO.MaxNewTokens, TopP: 0.9, Seed: 13}
	prompts := filepath.Join(cfg.Work, "prompts.jsonl")
	n, err := writeRollouts(chat, prompts, cfg.Domains, cfg.Conversations, cfg.Turns, cfg.Temperature, rand.New(rand.NewPCG(17, 0x990)))
	if err != nil {
		return nil, err
	}
	logf("%d prompts from the model's own %v conversations: %s", n, cfg.Domains, prompts)
	rep := &PPOEvalReport{Prompts: n, KLTarget: cfg.PPO.KLTarget}
	runPPO := func(c train.PPOConfig, name string) (*train.Run, []train.Metrics, error) {
		c.ModelNameOrPath, c.PromptsPath, c.Reward, c.Device = cfg.Model, prompts, r.Name(), cfg.Device
		run, err := train.NewRun(filepath.Join(cfg.Work, "runs"), "ppo")
		if err != nil {
			return nil, nil, err
		}
		err = train.RunPPO(ctx, rt, run, c, r, train.Options{OnMetrics: func(m *train.Metrics) {
			logf("%s iteration %d: reward %.4f, ref KL %.3f, approx KL %.4f, clipped %.3f, length %.1f, ppl %.2f", name, m.Step,
				m.Extra["reward_mean"], m.Extra["ref_kl"], m.Extra["approx_kl"], m.Extra["clip_fraction"], m.Extra["response_length"], m.Extra["perplexity"])
		}})
		ms, _ := run.ReadMetrics()
		return run, ms, err
	}
	start := time.Now()
	run, ms, err := runPPO(cfg.PPO, "ppo")
	if err != nil {
		return nil, fmt.Errorf("the PPO run: %w", err)
	}
	rep.Seconds = time.Since(start).Seconds()
	if len(ms) > 0 {
		rep.RewardStart, rep.RewardEnd = ms[0].Extra["reward_mean"], ms[len(ms)-1].Extra["reward_mean"]
		for _, m := range ms {
			rep.RefKLMax = max(rep.RefKLMax, m.Extra["ref_kl"])
		}
	}
	st, _ := run.ReadState()
	before, after, err := beforeAfter(ctx, rt, dev, ref, st.Final, cfg.Eval)
	if err != nil {
		return nil, err
	}
	rep.DriftBefore, rep.DriftAfter = meanDrift(before, cfg.Eval.Domains), meanDrift(after, cfg.Eval.Domains)
	rep.DriftReduction = reduction(rep.DriftBefore, rep.DriftAfter)
	rep.CapabilityChange = -reduction(before.Capability, after.Capability)
	rep.RoleFidelity = after.RoleFidelity
	logf("ppo: reward %.4f -> %.4f, ref KL max %.3f (target %.3f), drift %.3f -> %.3f, capability %.3f -> %.3f",
		rep.RewardStart, rep.RewardEnd, rep.RefKLMax, rep.KLTarget, rep.DriftBefore, rep.DriftAfter, before.Capability, after.Capability)
	held, err := heldOutPrompts(&model.Chatter{Ctx: ctx, LM: ref, BatchSize: 64, MaxTokens: cfg.PPO.MaxNewTokens, TopP: 0.9, Seed: 21},
		cfg.Domains, cfg.HeldOut, cfg.Turns, cfg.Temperature, rand.New(rand.NewPCG(23, 0x4e1d)))
	if err != nil {
		return nil, err
	}
	if rep.ReferenceHeldOut, err = heldOutReward(ctx, ref, r, held, cfg.PPO.MaxNewTokens); err != nil {
		return nil, err
	}
	side := func(method, final string, secs float64, steps int, after *EvalReport) (SameBudget, error) {
		lm, err := model.Load(rt, final, model.Options{Device: dev})
		if err != nil {
			return SameBudget{}, err
		}
		hr, err := heldOutReward(ctx, lm, r, held, cfg.PPO.MaxNewTokens)
		if err == nil && after == nil {
			var personas *probes.Personas
			if personas, err = probes.LoadPersonas(); err == nil {
				after, err = EvalPersona(ctx, lm, personas, cfg.Eval)
			}
		}
		lm.Close()
		if err != nil {
			return SameBudget{}, fmt.Errorf("%s: %w", method, err)
		}
		sb := SameBudget{Method: method, Seconds: secs, Steps: steps, HeldOutReward: hr, DriftAfter: meanDrift(after, cfg.Eval.Domains),
			RoleFidelity: after.RoleFidelity, CapabilityChange: -reduction(before.Capability, after.Capability)}
		sb.DriftReduction = reduction(rep.DriftBefore, sb.DriftAfter)
		logf("%s (%.0f s, %d steps): held-out reward %.4f (reference %.4f), drift %.3f -> %.3f, capability %+.1f%%, role fidelity %.3f",
			method, secs, steps, hr, rep.ReferenceHeldOut, rep.DriftBefore, sb.DriftAfter, 100*sb.CapabilityChange, sb.RoleFidelity)
		return sb, nil
	}
	sb, err := side("ppo", st.Final, rep.Seconds, st.Step, after)
	if err != nil {
		return nil, err
	}
	rep.SameBudget = append(rep.SameBudget, sb)
	if cfg.ALoL.Algorithm != "" {
		c := cfg.ALoL
		c.ModelNameOrPath, c.DatasetPath, c.Reward, c.Device, c.MaxSeconds = cfg.Model, prompts, r.Name(), cfg.Device, rep.Seconds
		arun, err := train.NewRun(filepath.Join(cfg.Work, "runs"), c.Algorithm)
		if err != nil {
			return nil, err
		}
		astart := time.Now()
		if err := train.RunALoL(ctx, rt, arun, c, r, train.Options{}); err != nil {
			return nil, fmt.Errorf("the A-LoL run: %w", err)
		}
		secs := time.Since(astart).Seconds()
		ast, _ := arun.ReadState()
		if sb, err = side(c.Algorithm, ast.Final, secs, ast.Step, nil); err != nil {
			return nil, err
		}
		rep.SameBudget = append(rep.SameBudget, sb)
	}
	_, _, err = runPPO(cfg.Unstable, "unstable")
	var collapse train.ErrCollapse
	switch {
	case errors.As(err, &collapse):
		rep.CollapseStop, rep.CollapseReason = true, collapse.Reason
	case err != nil:
		return nil, fmt.Errorf("the unstable run: %w", err)
	default:
		rep.CollapseReason = "the unstable run finished without tripping the monitor"
	}
	logf("unstable run: %s", rep.CollapseReason)
	raw, _ := json.MarshalIndent(rep, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(cfg.Work, "ppo_eval.json"), append(raw, '\n')); err != nil {
		return nil, err
	}
	return rep, nil
}
