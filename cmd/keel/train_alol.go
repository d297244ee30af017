package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/train"
)

// runTrainALoL: keel train alol --model DIR --data FILE.jsonl --reward SPEC --algorithm ALG [flags]
func runTrainALoL(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	c := train.DefaultALoLConfig() // the flags show the config's own defaults
	fs.StringVar(&c.ModelNameOrPath, "model", "", "model to fine-tune (the frozen reference): a folder, a Hugging Face id or persona (the default)")
	fs.StringVar(&c.DatasetPath, "data", "", "JSONL of {\"messages\": [..., the assistant's response], \"reward\"?: r, \"answer\"?: a}")
	fs.StringVar(&c.Reward, "reward", "", "reward spec: axis, exact, style:ROLE, rm:DIR (a reward model), cmd:PROGRAM, weighted sums (\"0.7*axis+0.3*exact\"); empty: each line's \"reward\"")
	fs.StringVar(&c.Algorithm, "algorithm", c.Algorithm, fmt.Sprint("one of ", train.ALoLAlgorithms))
	fs.Float64Var(&c.PPOClip, "ppo-clip", 0, "importance-weight clamp half-width eps (default 0.9; 0 for a_lol_kl)")
	fs.Float64Var(&c.KLBeta, "kl-beta", 0, "a_lol_kl's KL weight (default 0.1)")
	fs.Float64Var(&c.LearningRate, "lr", c.LearningRate, "learning rate")
	fs.IntVar(&c.MaxSteps, "steps", c.MaxSteps, "optimizer steps (the A-LoL family runs this times the positive-advantage fraction)")
	fs.IntVar(&c.PerDeviceTrainBatchSize, "batch", c.PerDeviceTrainBatchSize, "examples per step")
	fs.Float64Var(&c.MaxSeconds, "max-seconds", c.MaxSeconds, "wall-clock budget of the run in seconds: training ends at the first step past it (0 = none)")
	fs.IntVar(&c.WarmupSteps, "warmup-steps", c.WarmupSteps, "steps of linear warmup")
	fs.StringVar(&c.LRSchedulerType, "schedule", c.LRSchedulerType, "constant, linear or cosine")
	fs.Float64Var(&c.MaxGradNorm, "clip", c.MaxGradNorm, "global gradient-norm clip")
	fs.Float64Var(&c.WeightDecay, "weight-decay", c.WeightDecay, "AdamW weight decay")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed (validation split, minibatches, value head)")
	fs.IntVar(&c.MaxPromptLength, "max-prompt", c.MaxPromptLength, "prompt tokens kept (cut from the left)")
	fs.IntVar(&c.MaxResponseLength, "max-response", c.MaxResponseLength, "response tokens kept; also the validation replies' length")
	fs.Float64Var(&c.ValidationFraction, "validation", c.ValidationFraction, "fraction of prompts held out for V_ref and the validation reward")
	fs.IntVar(&c.MaxValidation, "max-validation", c.MaxValidation, "at most this many validation prompts")
	fs.IntVar(&c.EvalSteps, "eval-every", c.EvalSteps, "steps between validation-reward measurements (the best is kept)")
	trainerFlags(fs, &c.Device, &c.DType, &c.SaveSteps, &c.SaveTotalLimit, "steps between checkpoints")
	c.Value = train.DefaultValueConfig()
	fs.Float64Var(&c.Value.LearningRate, "value-lr", c.Value.LearningRate, "value head learning rate")
	fs.IntVar(&c.Value.Epochs, "value-epochs", c.Value.Epochs, "value head epochs (the best is kept)")
	fs.Float64Var(&c.Value.MaxValue, "max-value", c.Value.MaxValue, "the reward's upper bound (V = sigmoid * max-value)")
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
	run, resuming, err := rf.start("alol", "--data", c.DatasetPath, &c.ModelNameOrPath, &c)
	if err != nil {
		return err
	}
	return rf.launch("alol", args, run, c.MaxSteps, stdout, resuming, func(ctx context.Context, rt *torch.Runtime, opts train.Options) error {
		var reward train.Reward
		if c.Reward != "" { // otherwise each line's own "reward"
			r, release, err := rw.resolve(rt, c.Reward, c.ModelNameOrPath, c.Device)
			if err != nil {
				return err
			}
			defer release()
			reward = r
		}
		return train.RunALoL(ctx, rt, run, c, reward, opts)
	})
}
