package main

import (
	"context"
	"flag"
	"io"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/train"
)

// runTrainRM: keel train rm --model DIR --data PAIRS.jsonl [flags]: a reward model from preference pairs, for
// --reward rm:DIR and PPO's --value-model.
func runTrainRM(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var c train.RewardConfig
	c.Defaults() // the flags show the config's own defaults
	fs.StringVar(&c.ModelNameOrPath, "model", "", "model to start from (a causal LM gets a score head; a reward model keeps training); default: the embedded persona model")
	fs.StringVar(&c.DatasetPath, "data", "", "JSONL of preference pairs: {\"messages\": prompt, \"chosen\": \"...\", \"rejected\": \"...\"} or TRL's {\"chosen\": [messages], \"rejected\": [messages]}")
	fs.Float64Var(&c.LearningRate, "lr", c.LearningRate, "learning rate")
	fs.IntVar(&c.MaxSteps, "steps", c.MaxSteps, "optimizer steps")
	fs.IntVar(&c.PerDeviceTrainBatchSize, "batch", c.PerDeviceTrainBatchSize, "pairs per step")
	fs.IntVar(&c.MaxLength, "max-length", c.MaxLength, "tokens kept per conversation (cut from the left)")
	fs.Float64Var(&c.CenterRewardsCoefficient, "center-rewards", c.CenterRewardsCoefficient, "weight of mean((r_chosen + r_rejected)^2), keeping rewards near 0 (TRL's center_rewards_coefficient)")
	fs.Float64Var(&c.EvalFraction, "validation", 0.1, "share of pairs held out for eval accuracy")
	fs.IntVar(&c.EvalSteps, "eval-every", c.EvalSteps, "steps between held-out evaluations")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed")
	trainerFlags(fs, &c.Device, &c.DType, &c.SaveSteps, &c.SaveTotalLimit, "steps between checkpoints")
	var rf runFlags
	rf.register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	run, resuming, err := rf.start("rm", "--data", c.DatasetPath, &c.ModelNameOrPath, &c)
	if err != nil {
		return err
	}
	return rf.launch("rm", args, run, c.MaxSteps, stdout, resuming, func(ctx context.Context, rt *torch.Runtime, opts train.Options) error {
		return train.RunRewardModel(ctx, rt, run, c, opts)
	})
}
