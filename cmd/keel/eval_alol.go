package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/evals"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// runEvalALoL: keel eval alol [--model DIR] [--json]: the model's own therapy and philosophy rollouts, rewarded by
// the axis, fine-tuned with every A-LoL variant over the seeds; held-out reward per variant, and drift, role
// fidelity and capability of the a_lol model against the reference.
func runEvalALoL(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	cfg := evals.DefaultALoLEval()
	var mf cli.ModelFlags
	mf.Register(fs)
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	work := fs.String("work", "", "folder for the rollouts and runs (default: a new folder under the system's temp)")
	variants := fs.String("variants", strings.Join(cfg.Variants, ","), "algorithms to compare")
	seeds := fs.String("seeds", "1,2,3", "seeds; every variant runs once per seed")
	lrs := fs.String("lr", "", "learning rates per variant, \"a_lol=1e-4,nll=3e-5\" (default 1e-4 each), used when --tune-lr is empty")
	tune := fs.String("tune-lr", "3e-4,1e-3", "candidate learning rates: each variant takes the one with the best validation reward on the first seed (empty: --lr)")
	fs.IntVar(&cfg.Conversations, "conversations", cfg.Conversations, "training rollout conversations per domain")
	fs.IntVar(&cfg.HeldOut, "held-out", cfg.HeldOut, "held-out conversations per domain (held-out reward)")
	fs.IntVar(&cfg.Turns, "turns", cfg.Turns, "turns per conversation")
	fs.IntVar(&cfg.Steps, "steps", cfg.Steps, "max_steps of every run")
	fs.IntVar(&cfg.Batch, "batch", cfg.Batch, "examples per step")
	fs.IntVar(&cfg.MaxPrompt, "max-prompt", cfg.MaxPrompt, "prompt tokens kept (the conversation's tail)")
	fs.IntVar(&cfg.MaxResponse, "max-response", cfg.MaxResponse, "response tokens kept and generated")
	fs.IntVar(&cfg.Eval.Conversations, "drift-conversations", cfg.Eval.Conversations, "drift conversations per domain for the before/after drift")
	fs.IntVar(&cfg.Eval.QuestionsPerPrompt, "questions", cfg.Eval.QuestionsPerPrompt, "role fidelity: questions under each of a role's 5 prompts")
	roles := fs.String("roles", "", "comma-separated roles for role fidelity (default: all)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	cfg.Variants = cli.SplitList(*variants)
	for _, v := range cfg.Variants {
		if !slices.Contains(train.ALoLAlgorithms, v) {
			return cli.Usagef("--variants: %q is not one of %v", v, train.ALoLAlgorithms)
		}
	}
	cfg.Seeds = nil
	for _, f := range cli.SplitList(*seeds) {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return cli.Usagef("--seeds: %q is not a whole number", f)
		}
		cfg.Seeds = append(cfg.Seeds, v)
	}
	for _, kv := range cli.SplitList(*lrs) {
		k, v, ok := strings.Cut(kv, "=")
		x, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil || x <= 0 || !slices.Contains(train.ALoLAlgorithms, k) {
			return cli.Usagef("--lr: %q is not VARIANT=RATE with a positive rate", kv)
		}
		cfg.LR[k] = x
	}
	for _, f := range cli.SplitList(*tune) {
		x, err := strconv.ParseFloat(f, 64)
		if err != nil || x <= 0 {
			return cli.Usagef("--tune-lr: %q is not a positive rate", f)
		}
		cfg.TuneLR = append(cfg.TuneLR, x)
	}
	if len(cfg.Seeds) == 0 || len(cfg.Variants) == 0 || cfg.Steps < 1 || cfg.Batch < 1 || cfg.Conversations < 1 || cfg.HeldOut < 1 {
		return cli.Usagef("give at least one variant and seed, and positive --steps, --batch, --conversations and --held-out")
	}
	rt, err := openRLEval(&mf, *roles, &cfg.Eval, work, "alol")
	if err != nil {
		return err
	}
	cfg.Model, cfg.Device, cfg.Work, cfg.Log = mf.Dir, mf.Device, *work, stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := evals.EvalALoL(ctx, rt, cfg, axisReward)
	if err != nil {
		return err
	}
	if *asJSON {
		return printIndented(stdout, rep)
	}
	fmt.Fprintf(stdout, "A-LoL on %d rollout turns of the model's own %v conversations, reward axis (%d steps, batch %d, seeds %v)\n", rep.Examples, cfg.Domains, cfg.Steps, cfg.Batch, cfg.Seeds)
	fmt.Fprintf(stdout, "%-15s %12s %8s %10s %8s\n", "variant", "held-out R", "spread", "lr", "s/run")
	fmt.Fprintf(stdout, "%-15s %12.4f %8s %10s %8s\n", "reference", rep.ReferenceReward, "", "", "")
	for _, v := range cfg.Variants {
		r := rep.Variants[v]
		fmt.Fprintf(stdout, "%-15s %12.4f %8.4f %10.1e %8.0f\n", v, r.RewardMean, r.RewardStd, r.LR, rep.Seconds[v])
	}
	fmt.Fprintf(stdout, "a_lol: drift %.3f -> %.3f (reduction %.1f%%), role fidelity %.3f, capability %.3f -> %.3f (%+.1f%%)\n",
		rep.DriftBefore, rep.DriftAfter, 100*rep.DriftReduction, rep.RoleFidelity, rep.CapabilityBefore, rep.CapabilityAfter, 100*rep.CapabilityChange)
	fmt.Fprintf(stdout, "work folder: %s\n", cfg.Work)
	return nil
}

// openRLEval is the RL comparisons' common start: the role list checked, the model loaded once (a bad --model
// fails before any work) and the work folder made (a new temporary one when none is given).
func openRLEval(mf *cli.ModelFlags, roles string, ev *evals.EvalConfig, work *string, name string) (*torch.Runtime, error) {
	p, err := probes.LoadPersonas()
	if err != nil {
		return nil, err
	}
	ev.Roles = cli.SplitList(roles)
	if err := ev.Check(p); err != nil {
		return nil, cli.UsageError{Err: err}
	}
	if err := mf.OneDevice("keel eval " + name); err != nil {
		return nil, err
	}
	rt, lm, err := mf.Load()
	if err != nil {
		return nil, err
	}
	lm.Close()
	if *work == "" {
		if *work, err = os.MkdirTemp("", "keel-eval-"+name+"-*"); err != nil {
			return nil, err
		}
	}
	return rt, nil
}

// axisReward is the comparisons' reward: the loaded reference's own axis.
func axisReward(ref *model.LM) (train.Reward, error) { return evals.AxisReward(ref, "", false) }

func printIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
