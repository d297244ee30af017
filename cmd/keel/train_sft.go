package main

import (
	"context"
	"flag"
	"io"

	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/train"
)

func runTrainSFT(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	c := train.DefaultSFTConfig() // the flags show the config's own defaults
	fs.StringVar(&c.ModelNameOrPath, "model", "", "model to fine-tune: a folder, a Hugging Face id or persona (the default)")
	fs.StringVar(&c.DatasetPath, "data", "", "JSONL of {\"messages\": [...]} or {\"text\": ...} lines, or a .txt file")
	fs.Float64Var(&c.LearningRate, "lr", c.LearningRate, "peak learning rate")
	fs.IntVar(&c.MaxSteps, "steps", c.MaxSteps, "optimizer steps")
	fs.IntVar(&c.PerDeviceTrainBatchSize, "batch", c.PerDeviceTrainBatchSize, "sequences per micro-batch")
	fs.IntVar(&c.GradientAccumulationSteps, "accum", c.GradientAccumulationSteps, "micro-batches per step")
	fs.Float64Var(&c.WarmupRatio, "warmup", c.WarmupRatio, "fraction of steps of linear warmup")
	fs.StringVar(&c.LRSchedulerType, "schedule", c.LRSchedulerType, "cosine, linear or constant")
	fs.Float64Var(&c.MaxGradNorm, "clip", c.MaxGradNorm, "global gradient-norm clip")
	fs.Float64Var(&c.WeightDecay, "weight-decay", c.WeightDecay, "AdamW weight decay")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed (data order, eval split, dropout)")
	fs.IntVar(&c.MaxSeqLength, "seq-len", c.MaxSeqLength, "packed sequence length")
	fs.Float64Var(&c.EvalFraction, "eval-fraction", c.EvalFraction, "held-out fraction of examples")
	fs.IntVar(&c.EvalSteps, "eval-every", c.EvalSteps, "steps between eval-loss measurements")
	trainerFlags(fs, &c.Device, &c.DType, &c.SaveSteps, &c.SaveTotalLimit, "steps between checkpoints")
	fs.BoolVar(&c.BF16, "bf16", c.BF16, "bfloat16 autocast for the forward pass (mixed precision; f32 weights)")
	var lora loraFlags
	lora.register(fs)
	var rf runFlags
	rf.register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	c.LoRA = lora.config()
	run, resuming, err := rf.start("sft", "--data", c.DatasetPath, &c.ModelNameOrPath, &c)
	if err != nil {
		return err
	}
	return rf.launch("sft", args, run, c.MaxSteps, stdout, resuming, func(ctx context.Context, rt *torch.Runtime, opts train.Options) error {
		return train.RunSFT(ctx, rt, run, c, opts)
	})
}
