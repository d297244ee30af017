package main

import (
	"context"
	"io"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/train"
)

// runTrainPPO: keel train ppo --model DIR --prompts FILE.jsonl --reward SPEC [flags]
func runTrainPPO(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("train ppo", stderr)
	var c train.PPOConfig
	fs.StringVar(&c.ModelNameOrPath, "model", "", "SFT model folder to start from (also the frozen reference); default: the embedded persona model")
	fs.StringVar(&c.PromptsPath, "prompts", "", "JSONL of {\"messages\": [...]} ending with the user's turn (a trailing assistant reply is dropped)")
	fs.StringVar(&c.Reward, "reward", "axis", "reward spec: axis, exact, style:ROLE, cmd:PROGRAM, weighted sums")
	fs.Float64Var(&c.LearningRate, "lr", 1e-5, "learning rate (policy and critic)")
	fs.IntVar(&c.MaxSteps, "steps", 20, "PPO iterations (rollouts, then updates)")
	fs.IntVar(&c.RolloutBatchSize, "rollouts", 32, "responses per iteration")
	fs.IntVar(&c.MiniBatchSize, "mini-batch", 8, "responses per update")
	fs.IntVar(&c.NumPPOEpochs, "ppo-epochs", 1, "passes over each iteration's rollouts")
	fs.Float64Var(&c.KLCoef, "kl-coef", 0.05, "token-level KL penalty to the reference (0 = none)")
	fs.Float64Var(&c.Cliprange, "cliprange", 0.2, "policy ratio clip")
	fs.Float64Var(&c.CliprangeValue, "cliprange-value", 0.2, "value clip")
	fs.Float64Var(&c.VFCoef, "vf-coef", 1.0, "value loss weight")
	fs.Float64Var(&c.Gamma, "gamma", 1.0, "discount")
	fs.Float64Var(&c.Lam, "lam", 0.95, "GAE lambda")
	fs.BoolVar(&c.WhitenRewards, "whiten-rewards", false, "whiten the per-token rewards before GAE")
	fs.BoolVar(&c.RewardNormalize, "reward-normalize", true, "normalise scores with running statistics (PPO-max)")
	fs.Float64Var(&c.RewardClip, "reward-clip", 5, "clip normalised scores to +-this")
	fs.Float64Var(&c.MaxGradNorm, "clip", 1.0, "global gradient-norm clip")
	fs.Float64Var(&c.EntCoef, "ent-coef", 0, "entropy bonus (off in PPO-max)")
	fs.Float64Var(&c.PtxCoef, "ptx-coef", 0, "pretraining (SFT) loss weight on --ptx-data")
	fs.StringVar(&c.PtxDataPath, "ptx-data", "", "SFT data for the pretraining term")
	fs.Float64Var(&c.Temperature, "temperature", 0.8, "rollout temperature")
	fs.Float64Var(&c.TopP, "top-p", 0.9, "rollout top-p")
	fs.Float64Var(&c.RepetitionPenalty, "repetition-penalty", 1.1, "rollout repetition penalty")
	fs.IntVar(&c.MaxNewTokens, "max-new-tokens", 64, "response length cap")
	fs.IntVar(&c.MaxPromptLength, "max-prompt", 512, "prompt tokens kept (cut from the left)")
	fs.IntVar(&c.CriticWarmupSteps, "critic-warmup", 0, "iterations training the critic alone before PPO (PPO-max)")
	fs.Float64Var(&c.KLTarget, "kl-target", 0, "collapse monitor: the ref KL per response to stay under (0 = off)")
	fs.IntVar(&c.KLStopSteps, "kl-stop-steps", 0, "stop when ref KL is above --kl-target this many iterations in a row")
	fs.Uint64Var(&c.Seed, "seed", 0, "seed")
	fs.IntVar(&c.SaveSteps, "save-every", 5, "iterations between checkpoints (only while the KL is under target)")
	fs.IntVar(&c.SaveTotalLimit, "keep", 2, "checkpoints kept")
	fs.StringVar(&c.Device, "device", "cpu", "cpu, cuda or cuda:N")
	fs.StringVar(&c.DType, "dtype", "f32", "f32, f16 or bf16")
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
	if c.ModelNameOrPath == "" && *rf.resume == "" && *rf.runDir == "" {
		mf := modelFlags{}
		if err := mf.resolve(); err != nil {
			return err
		}
		c.ModelNameOrPath = mf.dir
	}
	run, resuming, err := rf.open("ppo", c.ModelNameOrPath != "" && c.PromptsPath != "", &c)
	if err != nil {
		return err
	}
	if *rf.detach {
		return detachTraining(run, "ppo", args, stdout)
	}
	return rf.execute("ppo", run, c.MaxSteps, stdout, func(ctx context.Context, rt *torch.Runtime, opts train.Options) error {
		dev, err := torch.ParseDevice(c.Device)
		if err != nil {
			return usageError{err}
		}
		lm, err := model.Load(rt, c.ModelNameOrPath, model.Options{Device: dev})
		if err != nil {
			return err
		}
		defer lm.Close()
		reward, err := parseReward(c.Reward, lm, *axisDir, *ignoreHash)
		if err != nil {
			return err
		}
		return train.RunPPO(ctx, rt, run, c, reward, opts)
	}, resuming)
}
