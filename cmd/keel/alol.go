package main

import (
	"context"
	"encoding/json"
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
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// runTrainALoL: keel train alol --model DIR --data FILE.jsonl --reward SPEC --algorithm ALG [flags]
func runTrainALoL(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("train alol", stderr)
	c := train.DefaultALoLConfig() // the flags show the config's own defaults
	fs.StringVar(&c.ModelNameOrPath, "model", "", "model folder to fine-tune (the frozen reference); default: the embedded persona model")
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
	fs.IntVar(&c.SaveSteps, "save-every", c.SaveSteps, "steps between checkpoints")
	fs.IntVar(&c.SaveTotalLimit, "keep", c.SaveTotalLimit, "checkpoints kept")
	fs.StringVar(&c.Device, "device", c.Device, "cpu, cuda or cuda:N")
	fs.StringVar(&c.DType, "dtype", c.DType, "f32, f16 or bf16")
	c.Value = train.DefaultValueConfig()
	fs.Float64Var(&c.Value.LearningRate, "value-lr", c.Value.LearningRate, "value head learning rate")
	fs.IntVar(&c.Value.Epochs, "value-epochs", c.Value.Epochs, "value head epochs (the best is kept)")
	fs.Float64Var(&c.Value.MaxValue, "max-value", c.Value.MaxValue, "the reward's upper bound (V = sigmoid * max-value)")
	axisDir := fs.String("axis", "", "axis folder for the axis reward (axis.safetensors, default_vector.safetensors); default: the model's axis/")
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
	run, resuming, err := rf.open("alol", "--data", c.DatasetPath, &c)
	if err != nil {
		return err
	}
	return rf.launch("alol", args, run, c.MaxSteps, stdout, resuming, func(ctx context.Context, rt *torch.Runtime, opts train.Options) error {
		var reward train.Reward
		if c.Reward != "" { // otherwise each line's own "reward"
			r, release, err := trainerReward(rt, c.Reward, c.ModelNameOrPath, c.Device, *axisDir, *ignoreHash)
			if err != nil {
				return err
			}
			defer release()
			reward = r
		}
		return train.RunALoL(ctx, rt, run, c, reward, opts)
	})
}

// trainerReward loads the model a reward is computed with (the axis reward reads its activations) and parses
// the spec; release frees the model once the run is over.
func trainerReward(rt *torch.Runtime, spec, modelDir, device, axisDir string, ignoreHash bool) (train.Reward, func(), error) {
	dev, err := torch.ParseDevice(device)
	if err != nil {
		return nil, nil, usageError{err}
	}
	lm, err := model.Load(rt, modelDir, model.Options{Device: dev})
	if err != nil {
		return nil, nil, err
	}
	var rms []*train.RewardModel
	release := func() {
		for _, rm := range rms {
			rm.Close()
		}
		lm.Close()
	}
	// rm:DIR loads a reward model beside the policy, on the same device.
	loadRM := func(dir string) (train.Reward, error) {
		rm, err := train.LoadRewardModel(rt, dir, model.Options{Device: dev})
		if err != nil {
			return nil, err
		}
		rms = append(rms, rm)
		return rm, nil
	}
	r, err := parseReward(spec, lm, axisDir, ignoreHash, loadRM)
	if err != nil {
		release()
		return nil, nil, err
	}
	return r, release, nil
}

// parseReward resolves a reward spec for a model: the axis reward reads the axis folder (default: the model's
// axis/, unpacked from the binary for the embedded persona model) and scores at the middle layer.
func parseReward(spec string, lm *model.LM, axisDir string, ignoreHash bool, rm func(dir string) (train.Reward, error)) (train.Reward, error) {
	personas, err := probes.LoadPersonas()
	if err != nil {
		return nil, err
	}
	scorer := probes.NewScorer(personas)
	names := evals.Rewards(scorer, func() (train.Reward, error) { return evals.AxisReward(lm, axisDir, ignoreHash) })
	if rm != nil {
		names["rm"] = func(dir string) (train.Reward, error) {
			if dir == "" {
				return nil, fmt.Errorf("rm takes a folder: rm:DIR, a *ForSequenceClassification reward model")
			}
			return rm(dir)
		}
	}
	r, err := train.ParseReward(spec, names)
	if err != nil {
		return nil, usageError{err} // ParseReward names the spec and the term
	}
	return r, nil
}

// runEvalALoL: keel eval alol [--model DIR] [--json]: the model's own therapy and philosophy rollouts, rewarded by
// the axis, fine-tuned with every A-LoL variant over the seeds; held-out reward per variant, and drift, role
// fidelity and capability of the a_lol model against the reference.
func runEvalALoL(args []string, stdout, stderr io.Writer) error {
	cfg := evals.DefaultALoLEval()
	fs := newFlags("eval alol", stderr)
	var mf modelFlags
	mf.register(fs)
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
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg.Variants = splitList(*variants)
	for _, v := range cfg.Variants {
		if !slices.Contains(train.ALoLAlgorithms, v) {
			return usageError{fmt.Errorf("--variants: %q is not one of %v", v, train.ALoLAlgorithms)}
		}
	}
	cfg.Seeds = nil
	for _, f := range splitList(*seeds) {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return usageError{fmt.Errorf("--seeds: %q is not a whole number", f)}
		}
		cfg.Seeds = append(cfg.Seeds, v)
	}
	for _, kv := range splitList(*lrs) {
		k, v, ok := strings.Cut(kv, "=")
		x, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil || x <= 0 || !slices.Contains(train.ALoLAlgorithms, k) {
			return usageError{fmt.Errorf("--lr: %q is not VARIANT=RATE with a positive rate", kv)}
		}
		cfg.LR[k] = x
	}
	for _, f := range splitList(*tune) {
		x, err := strconv.ParseFloat(f, 64)
		if err != nil || x <= 0 {
			return usageError{fmt.Errorf("--tune-lr: %q is not a positive rate", f)}
		}
		cfg.TuneLR = append(cfg.TuneLR, x)
	}
	if len(cfg.Seeds) == 0 || len(cfg.Variants) == 0 || cfg.Steps < 1 || cfg.Batch < 1 || cfg.Conversations < 1 || cfg.HeldOut < 1 {
		return usageError{fmt.Errorf("give at least one variant and seed, and positive --steps, --batch, --conversations and --held-out")}
	}
	rt, err := openRLEval(&mf, *roles, &cfg.Eval, work, "alol")
	if err != nil {
		return err
	}
	cfg.Model, cfg.Device, cfg.Work, cfg.Log = mf.dir, mf.device, *work, stderr
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
func openRLEval(mf *modelFlags, roles string, ev *evals.EvalConfig, work *string, name string) (*torch.Runtime, error) {
	p, err := probes.LoadPersonas()
	if err != nil {
		return nil, err
	}
	ev.Roles = splitList(roles)
	if err := ev.Check(p); err != nil {
		return nil, usageError{err}
	}
	if err := mf.oneDevice("keel eval " + name); err != nil {
		return nil, err
	}
	rt, lm, err := mf.load()
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
func axisReward(ref *model.LM) (train.Reward, error) { return parseReward("axis", ref, "", false, nil) }

func printIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
