package main

import (
	"context"
	"flag"
	"io"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/train"
)

// runTrainPPO: keel train ppo --model DIR --prompts FILE.jsonl --reward SPEC [flags]
func runTrainPPO(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	c := train.DefaultPPOConfig() // the flags show the config's own defaults
	fs.StringVar(&c.ModelNameOrPath, "model", "", "SFT model to start from (also the frozen reference): a folder, a Hugging Face id or persona (the default)")
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
	trainerFlags(fs, &c.Device, &c.DType, &c.SaveSteps, &c.SaveTotalLimit, "iterations between checkpoints (only while the KL is under target)")
	var rw rewardFlags
	rw.register(fs)
	var lora loraFlags
	lora.register(fs)
	var rf runFlags
	rf.register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	c.LoRA = lora.config()
	run, resuming, err := rf.start("ppo", "--prompts", c.PromptsPath, &c.ModelNameOrPath, &c)
	if err != nil {
		return err
	}
	return rf.launch("ppo", args, run, c.MaxSteps, stdout, resuming, func(ctx context.Context, rt *torch.Runtime, opts train.Options) error {
		reward, release, err := rw.resolve(rt, c.Reward, c.ModelNameOrPath, c.Device)
		if err != nil {
			return err
		}
		defer release()
		return train.RunPPO(ctx, rt, run, c, reward, opts)
	})
}
