package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/evals"
	"github.com/keel-lab/keel/train"
)

// runTrainPPO: keel train ppo --model DIR --prompts FILE.jsonl --reward SPEC [flags]
func runTrainPPO(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("train ppo", stderr)
	c := train.DefaultPPOConfig() // the flags show the config's own defaults
	fs.StringVar(&c.ModelNameOrPath, "model", "", "SFT model folder to start from (also the frozen reference); default: the embedded persona model")
	fs.StringVar(&c.PromptsPath, "prompts", "", "JSONL of {\"messages\": [...]} ending with the user's turn (a trailing assistant reply is dropped)")
	fs.StringVar(&c.Reward, "reward", "axis", "reward spec: axis, exact, style:ROLE, rm:DIR (a reward model), cmd:PROGRAM, weighted sums")
	fs.Float64Var(&c.LearningRate, "lr", c.LearningRate, "learning rate (policy and critic)")
	fs.IntVar(&c.MaxSteps, "steps", c.MaxSteps, "PPO iterations (rollouts, then updates)")
	fs.IntVar(&c.RolloutBatchSize, "rollouts", c.RolloutBatchSize, "responses per iteration")
	fs.IntVar(&c.MiniBatchSize, "mini-batch", c.MiniBatchSize, "responses per update")
	fs.IntVar(&c.NumPPOEpochs, "ppo-epochs", c.NumPPOEpochs, "passes over each iteration's rollouts")
	fs.Float64Var(&c.KLCoef, "kl-coef", c.KLCoef, "token-level KL penalty to the reference (0 = none)")
	fs.Float64Var(&c.Cliprange, "cliprange", c.Cliprange, "policy ratio clip")
	fs.Float64Var(&c.CliprangeValue, "cliprange-value", c.CliprangeValue, "value clip")
	fs.Float64Var(&c.VFCoef, "vf-coef", c.VFCoef, "value loss weight")
	fs.Float64Var(&c.Gamma, "gamma", c.Gamma, "discount")
	fs.Float64Var(&c.Lam, "lam", c.Lam, "GAE lambda")
	fs.BoolVar(&c.WhitenRewards, "whiten-rewards", c.WhitenRewards, "whiten the per-token rewards before GAE")
	fs.BoolVar(&c.RewardNormalize, "reward-normalize", c.RewardNormalize, "normalise scores with running statistics (PPO-max)")
	fs.Float64Var(&c.RewardClip, "reward-clip", c.RewardClip, "clip normalised scores to +-this")
	fs.Float64Var(&c.MaxGradNorm, "clip", c.MaxGradNorm, "global gradient-norm clip")
	fs.Float64Var(&c.EntCoef, "ent-coef", c.EntCoef, "entropy bonus (off in PPO-max)")
	fs.Float64Var(&c.PtxCoef, "ptx-coef", c.PtxCoef, "pretraining (SFT) loss weight on --ptx-data")
	fs.StringVar(&c.PtxDataPath, "ptx-data", "", "SFT data for the pretraining term")
	fs.Float64Var(&c.Temperature, "temperature", c.Temperature, "rollout temperature")
	fs.Float64Var(&c.TopP, "top-p", c.TopP, "rollout top-p")
	fs.Float64Var(&c.RepetitionPenalty, "repetition-penalty", c.RepetitionPenalty, "rollout repetition penalty")
	fs.IntVar(&c.MaxNewTokens, "max-new-tokens", c.MaxNewTokens, "response length cap")
	fs.IntVar(&c.MaxPromptLength, "max-prompt", c.MaxPromptLength, "prompt tokens kept (cut from the left)")
	fs.IntVar(&c.CriticWarmupSteps, "critic-warmup", c.CriticWarmupSteps, "iterations training the critic alone before PPO (PPO-max)")
	fs.StringVar(&c.ValueModelPath, "value-model", "", "start the critic from this reward model, a network of its own (PPO-max; TRL's value_model_path); default: a value head on the policy")
	fs.Float64Var(&c.KLTarget, "kl-target", c.KLTarget, "collapse monitor: the ref KL per response to stay under (0 = off)")
	fs.IntVar(&c.KLStopSteps, "kl-stop-steps", c.KLStopSteps, "stop when ref KL is above --kl-target this many iterations in a row")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed")
	fs.IntVar(&c.SaveSteps, "save-every", c.SaveSteps, "iterations between checkpoints (only while the KL is under target)")
	fs.IntVar(&c.SaveTotalLimit, "keep", c.SaveTotalLimit, "checkpoints kept")
	fs.StringVar(&c.Device, "device", c.Device, "cpu, cuda or cuda:N")
	fs.StringVar(&c.DType, "dtype", c.DType, "f32, f16 or bf16")
	axisDir := fs.String("axis", "", "axis folder for the axis reward; default: the model's axis/")
	ignoreHash := fs.Bool("ignore-hash", false, "use an axis made for other weights of the same shape")
	var lora loraFlags
	lora.register(fs)
	var rf runFlags
	rf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c.LoRA = lora.config()
	if err := rf.defaultModel(&c.ModelNameOrPath); err != nil {
		return err
	}
	run, resuming, err := rf.open("ppo", "--prompts", c.PromptsPath, &c)
	if err != nil {
		return err
	}
	return rf.launch("ppo", args, run, c.MaxSteps, stdout, resuming, func(ctx context.Context, rt *torch.Runtime, opts train.Options) error {
		reward, release, err := trainerReward(rt, c.Reward, c.ModelNameOrPath, c.Device, *axisDir, *ignoreHash)
		if err != nil {
			return err
		}
		defer release()
		return train.RunPPO(ctx, rt, run, c, reward, opts)
	})
}

// runEvalPPO: keel eval ppo [--model DIR] [--json]: PPO with the axis reward on the model's own therapy and
// philosophy conversations (reward, ref KL, drift and capability before and after), then an unstable run the
// collapse monitor must stop.
func runEvalPPO(args []string, stdout, stderr io.Writer) error {
	cfg := evals.DefaultPPOEval()
	fs := newFlags("eval ppo", stderr)
	var mf modelFlags
	mf.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	work := fs.String("work", "", "folder for the prompts and runs (default: a new folder under the system's temp)")
	fs.IntVar(&cfg.Conversations, "conversations", cfg.Conversations, "prompt conversations per domain")
	fs.IntVar(&cfg.Turns, "turns", cfg.Turns, "turns per conversation")
	fs.IntVar(&cfg.PPO.MaxSteps, "steps", cfg.PPO.MaxSteps, "PPO iterations")
	fs.IntVar(&cfg.PPO.RolloutBatchSize, "rollouts", cfg.PPO.RolloutBatchSize, "responses per iteration")
	fs.IntVar(&cfg.PPO.MiniBatchSize, "mini-batch", cfg.PPO.MiniBatchSize, "responses per update")
	fs.Float64Var(&cfg.PPO.LearningRate, "lr", cfg.PPO.LearningRate, "learning rate")
	fs.Float64Var(&cfg.PPO.KLCoef, "kl-coef", cfg.PPO.KLCoef, "token-level KL penalty")
	fs.Float64Var(&cfg.PPO.KLTarget, "kl-target", cfg.PPO.KLTarget, "ref KL per response the monitor holds both runs under")
	fs.IntVar(&cfg.PPO.MaxNewTokens, "max-new-tokens", cfg.PPO.MaxNewTokens, "response length cap")
	fs.StringVar(&cfg.ALoL.Algorithm, "alol", cfg.ALoL.Algorithm, "A-LoL variant run beside PPO at the same wall-clock budget (\"\" = none)")
	fs.Float64Var(&cfg.ALoL.LearningRate, "alol-lr", cfg.ALoL.LearningRate, "that run's learning rate")
	fs.IntVar(&cfg.HeldOut, "held-out", cfg.HeldOut, "held-out conversations per domain (held-out reward)")
	fs.IntVar(&cfg.Unstable.MaxSteps, "unstable-steps", cfg.Unstable.MaxSteps, "iterations of the unstable run")
	fs.Float64Var(&cfg.Unstable.LearningRate, "unstable-lr", cfg.Unstable.LearningRate, "the unstable run's learning rate (no KL penalty)")
	fs.IntVar(&cfg.Eval.Conversations, "drift-conversations", cfg.Eval.Conversations, "drift conversations per domain for the before/after drift")
	fs.IntVar(&cfg.Eval.QuestionsPerPrompt, "questions", cfg.Eval.QuestionsPerPrompt, "role fidelity: questions under each of a role's 5 prompts")
	roles := fs.String("roles", "", "comma-separated roles for role fidelity (default: all)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if cfg.PPO.MaxSteps < 1 || cfg.PPO.RolloutBatchSize < 1 || cfg.PPO.MiniBatchSize < 1 || cfg.Conversations < 1 || cfg.Unstable.MaxSteps < 1 || cfg.PPO.KLTarget <= 0 {
		return usageError{fmt.Errorf("--steps, --rollouts, --mini-batch, --conversations, --unstable-steps and --kl-target must be positive")}
	}
	if cfg.ALoL.Algorithm != "" && !slices.Contains(train.ALoLAlgorithms, cfg.ALoL.Algorithm) || cfg.ALoL.LearningRate <= 0 || cfg.HeldOut < 1 {
		return usageError{fmt.Errorf("--alol %q, --alol-lr %g, --held-out %d: give one of %v (or \"\"), a positive learning rate and at least one conversation", cfg.ALoL.Algorithm, cfg.ALoL.LearningRate, cfg.HeldOut, train.ALoLAlgorithms)}
	}
	cfg.Unstable.RolloutBatchSize, cfg.Unstable.MiniBatchSize, cfg.Unstable.MaxNewTokens = cfg.PPO.RolloutBatchSize, cfg.PPO.MiniBatchSize, cfg.PPO.MaxNewTokens
	cfg.Unstable.KLTarget = cfg.PPO.KLTarget
	rt, err := openRLEval(&mf, *roles, &cfg.Eval, work, "ppo")
	if err != nil {
		return err
	}
	cfg.Model, cfg.Device, cfg.Work, cfg.Log = mf.dir, mf.device, *work, stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := evals.EvalPPO(ctx, rt, cfg, axisReward)
	if err != nil {
		return err
	}
	if *asJSON {
		return printIndented(stdout, rep)
	}
	fmt.Fprintf(stdout, "PPO on %d prompts of the model's own %v conversations, reward axis, %d iterations of %d rollouts (%.0f s)\n", rep.Prompts, cfg.Domains, cfg.PPO.MaxSteps, cfg.PPO.RolloutBatchSize, rep.Seconds)
	fmt.Fprintf(stdout, "reward %.4f -> %.4f; ref KL max %.3f (target %.3f)\n", rep.RewardStart, rep.RewardEnd, rep.RefKLMax, rep.KLTarget)
	fmt.Fprintf(stdout, "drift %.3f -> %.3f (reduction %.1f%%); capability %+.1f%%; role fidelity %.3f\n", rep.DriftBefore, rep.DriftAfter, 100*rep.DriftReduction, 100*rep.CapabilityChange, rep.RoleFidelity)
	if len(rep.SameBudget) > 0 {
		fmt.Fprintf(stdout, "\nat the same wall-clock budget (held-out reward of the starting model %.4f, drift %.3f):\n", rep.ReferenceHeldOut, rep.DriftBefore)
		fmt.Fprintf(stdout, "%-8s %8s %6s %16s %12s %16s %14s %14s\n", "method", "seconds", "steps", "held-out reward", "drift after", "drift reduction", "capability", "role fidelity")
		for _, s := range rep.SameBudget {
			fmt.Fprintf(stdout, "%-8s %8.0f %6d %16.4f %12.3f %15.1f%% %+13.1f%% %14.3f\n", s.Method, s.Seconds, s.Steps, s.HeldOutReward, s.DriftAfter, 100*s.DriftReduction, 100*s.CapabilityChange, s.RoleFidelity)
		}
	}
	fmt.Fprintf(stdout, "unstable run (no KL, lr %g): collapse stop %v: %s\n", cfg.Unstable.LearningRate, rep.CollapseStop, rep.CollapseReason)
	fmt.Fprintf(stdout, "work folder: %s\n", cfg.Work)
	return nil
}
