package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"

	"github.com/keel-lab/keel/evals"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/train"
)

// runEvalPPO: keel eval ppo [--model DIR] [--json]: PPO with the axis reward on the model's own therapy and
// philosophy conversations (reward, ref KL, drift and capability before and after), then an unstable run the
// collapse monitor must stop.
func runEvalPPO(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	cfg := evals.DefaultPPOEval()
	var mf cli.ModelFlags
	mf.Register(fs)
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
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if cfg.PPO.MaxSteps < 1 || cfg.PPO.RolloutBatchSize < 1 || cfg.PPO.MiniBatchSize < 1 || cfg.Conversations < 1 || cfg.Unstable.MaxSteps < 1 || cfg.PPO.KLTarget <= 0 {
		return cli.Usagef("--steps, --rollouts, --mini-batch, --conversations, --unstable-steps and --kl-target must be positive")
	}
	if cfg.ALoL.Algorithm != "" && !slices.Contains(train.ALoLAlgorithms, cfg.ALoL.Algorithm) || cfg.ALoL.LearningRate <= 0 || cfg.HeldOut < 1 {
		return cli.Usagef("--alol %q, --alol-lr %g, --held-out %d: give one of %v (or \"\"), a positive learning rate and at least one conversation", cfg.ALoL.Algorithm, cfg.ALoL.LearningRate, cfg.HeldOut, train.ALoLAlgorithms)
	}
	cfg.Unstable.RolloutBatchSize, cfg.Unstable.MiniBatchSize, cfg.Unstable.MaxNewTokens = cfg.PPO.RolloutBatchSize, cfg.PPO.MiniBatchSize, cfg.PPO.MaxNewTokens
	cfg.Unstable.KLTarget = cfg.PPO.KLTarget
	rt, err := openRLEval(&mf, *roles, &cfg.Eval, work, "ppo")
	if err != nil {
		return err
	}
	cfg.Model, cfg.Device, cfg.Work, cfg.Log = mf.Dir, mf.Device, *work, stderr
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
