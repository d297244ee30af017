package train

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
)

// ALoLConfig configures an A-LoL fine-tune (Baheti et al., ICLR 2024) under the paper's names. The frozen
// reference is the starting model; the whole response is one action.
type ALoLConfig struct {
	ModelNameOrPath         string            `json:"model_name_or_path"`
	DatasetPath             string            `json:"dataset_path"`
	Reward                  string            `json:"reward"` // the reward spec (empty: each line's "reward")
	Algorithm               string            `json:"algorithm"`
	PPOClip                 float64           `json:"ppo_clip"` // eps: importance weights clamped to [1-eps, 1+eps]
	KLBeta                  float64           `json:"kl_beta"`  // a_lol_kl only
	LearningRate            float64           `json:"learning_rate"`
	MaxSteps                int               `json:"max_steps"` // before A-LoL's scaling by the positive-advantage fraction
	PerDeviceTrainBatchSize int               `json:"per_device_train_batch_size"`
	WarmupSteps             int               `json:"warmup_steps"`
	LRSchedulerType         string            `json:"lr_scheduler_type"` // constant (the paper's), linear, cosine
	MaxGradNorm             float64           `json:"max_grad_norm"`
	WeightDecay             float64           `json:"weight_decay"`
	AdamBeta1               float64           `json:"adam_beta1"`
	AdamBeta2               float64           `json:"adam_beta2"`
	AdamEpsilon             float64           `json:"adam_epsilon"`
	Seed                    uint64            `json:"seed"`
	MaxPromptLength         int               `json:"max_prompt_length"`   // prompts are cut from the left to this
	MaxResponseLength       int               `json:"max_response_length"` // responses are cut to this
	ValidationFraction      float64           `json:"validation_fraction"` // prompts for V_ref and the validation reward
	MaxValidation           int               `json:"max_validation"`      // at most this many validation prompts
	EvalSteps               int               `json:"eval_steps"`          // validation reward every this many steps
	SaveSteps               int               `json:"save_steps"`
	SaveTotalLimit          int               `json:"save_total_limit"`
	Device                  string            `json:"device"`
	DType                   string            `json:"dtype"`
	LoRA                    *model.LoRAConfig `json:"lora,omitempty"`
	Value                   ValueConfig       `json:"value"`
	// ScoreCache, when set, keeps each dataset example's reward and log pi_ref(y|x) across runs on the same
	// data, reward and reference (a comparison of variants and seeds scores the data once).
	ScoreCache string `json:"score_cache,omitempty"`
	// MaxSeconds, when set, is a wall-clock budget for the whole run (scoring and the value fit included):
	// training ends, validated and exported as usual, at the first step that finishes past it. The schedule is
	// still laid over MaxSteps. It is what makes comparisons at an equal budget possible.
	MaxSeconds float64 `json:"max_seconds,omitempty"`
}

// Defaults fills unset fields with the paper's settings (lr and steps scaled to the small models keel trains on a
// CPU).
func (c *ALoLConfig) Defaults() {
	def := DefaultALoLLoss(c.Algorithm)
	if c.PPOClip == 0 && c.Algorithm != "a_lol_kl" {
		c.PPOClip = def.PPOClip
	}
	if c.KLBeta == 0 {
		c.KLBeta = def.KLBeta
	}
	setDefault(&c.LearningRate, 1e-4)
	setDefault(&c.MaxSteps, 200)
	setDefault(&c.PerDeviceTrainBatchSize, 16)
	setDefault(&c.MaxGradNorm, 1.0)
	setDefault(&c.AdamBeta1, 0.9)
	setDefault(&c.AdamBeta2, 0.999)
	setDefault(&c.AdamEpsilon, 1e-6)
	setDefault(&c.MaxPromptLength, 640)
	setDefault(&c.MaxResponseLength, 128)
	setDefault(&c.ValidationFraction, 0.1)
	setDefault(&c.MaxValidation, 128)
	setDefault(&c.EvalSteps, 50)
	setDefault(&c.SaveSteps, 50)
	setDefault(&c.SaveTotalLimit, 2)
	if c.LRSchedulerType == "" {
		c.LRSchedulerType = "constant"
	}
	defaultDevice(&c.Device, &c.DType)
	if c.Value == (ValueConfig{}) {
		c.Value = DefaultValueConfig()
	}
}

func (c *ALoLConfig) check() error {
	if err := c.lossConfig().Check(); err != nil {
		return err
	}
	switch {
	case c.ModelNameOrPath == "":
		return fmt.Errorf("a model folder is required (--model)")
	case c.DatasetPath == "":
		return fmt.Errorf("a dataset is required (--data)")
	case c.LearningRate <= 0 || c.MaxSteps <= 0 || c.PerDeviceTrainBatchSize <= 0:
		return fmt.Errorf("--lr, --steps and --batch must be positive")
	case c.ValidationFraction <= 0 || c.ValidationFraction >= 1:
		return fmt.Errorf("--validation %v: give a fraction in (0, 1)", c.ValidationFraction)
	case c.LRSchedulerType != "cosine" && c.LRSchedulerType != "linear" && c.LRSchedulerType != "constant":
		return fmt.Errorf("--scheduler %q: use constant, linear or cosine", c.LRSchedulerType)
	case c.MaxSeconds < 0 || math.IsNaN(c.MaxSeconds):
		return fmt.Errorf("--max-seconds %v: give a budget in seconds, or 0 for none", c.MaxSeconds)
	}
	return nil
}

func (c *ALoLConfig) lossConfig() ALoLLossConfig {
	return ALoLLossConfig{Algorithm: c.Algorithm, PPOClip: c.PPOClip, KLBeta: c.KLBeta}
}

// usesAdvantage reports whether the algorithm needs V_ref (the A-LoL family).
func usesAdvantage(alg string) bool {
	return alg == "a_lol" || alg == "a_lol_ref_free" || alg == "a_lol_seq" || alg == "a_lol_kl"
}

// RunALoL fine-tunes offline on the dataset with the configured A-LoL algorithm until max_steps (scaled by the
// positive-advantage fraction for the A-LoL family), cancellation or an error. reward scores the validation
// replies (and the dataset when its lines carry no reward); nil uses the lines' own rewards and skips V_ref's
// fit and the validation reward, which need a reward to score new text.
func RunALoL(ctx context.Context, rt *torch.Runtime, run *Run, cfg ALoLConfig, reward Reward, opts Options) (err error) {
	began := time.Now()
	job, dev, dt, err := beginRun(run, "alol", &cfg, opts)
	if err != nil {
		return err
	}
	defer job.end(&err)
	ref, err := model.Load(rt, cfg.ModelNameOrPath, model.Options{Device: dev, DType: dt})
	if err != nil {
		return err
	}
	defer ref.Close()
	data, err := LoadOfflineData(cfg.DatasetPath, ref.Tokenizer, cfg.MaxPromptLength, cfg.MaxResponseLength)
	if err != nil {
		return err
	}
	trainEx, valEx := heldOut(data, cfg.ValidationFraction, cfg.MaxValidation, cfg.Seed, 0xa101)
	job.logf("model %s, %d examples: %d training, %d validation prompts; algorithm %s", cfg.ModelNameOrPath, len(data), len(trainEx), len(valEx), cfg.Algorithm)

	adv, err := advantages(ctx, job, ref, cfg, reward, trainEx, valEx)
	if err != nil {
		return err
	}
	positive := 0
	for _, a := range adv {
		if a.Advantage > 0 {
			positive++
		}
	}
	posFrac := float64(positive) / float64(len(adv))
	steps := cfg.MaxSteps
	if usesAdvantage(cfg.Algorithm) {
		if positive == 0 {
			return fmt.Errorf("%s: no example has a positive advantage (R > V_ref): A-LoL has nothing to learn from; check the reward", cfg.DatasetPath)
		}
		steps = max(1, int(math.Round(float64(cfg.MaxSteps)*posFrac)))
		job.logf("positive advantage on %.1f%% of the training set: %d steps", 100*posFrac, steps)
	}
	job.state.TotalSteps = steps

	lm, err := model.Load(rt, cfg.ModelNameOrPath, model.Options{Device: dev, DType: dt})
	if err != nil {
		return err
	}
	defer lm.Close()
	t, err := startTraining(rt, lm, cfg.LoRA, nil, torch.AdamWConfig{LR: cfg.LearningRate, Beta1: cfg.AdamBeta1, Beta2: cfg.AdamBeta2, Eps: cfg.AdamEpsilon, WeightDecay: cfg.WeightDecay},
		&stepLoop{run: run, job: job, opts: opts, base: modelBase{cfg.ModelNameOrPath, cfg.LoRA}, seed: cfg.Seed, steps: steps, saveEvery: cfg.SaveSteps, keep: cfg.SaveTotalLimit})
	if err != nil {
		return err
	}
	defer t.close()
	loop := t.loop

	// Minibatches: the A-LoL family draws examples with probability proportional to A+ (with replacement); the
	// others go through the data in a fresh seeded order each epoch. Both depend on the step alone, so a resumed
	// run draws what the uninterrupted one would have.
	var cum []float64
	total := 0.0
	for _, a := range adv {
		total += max(a.Advantage, 0)
		cum = append(cum, total)
	}
	indicesAt := func(step int) []int {
		idx := make([]int, cfg.PerDeviceTrainBatchSize)
		if usesAdvantage(cfg.Algorithm) {
			r := rand.New(rand.NewPCG(cfg.Seed, uint64(step)))
			for j := range idx {
				x := r.Float64() * total
				idx[j], _ = slices.BinarySearch(cum, x)
				idx[j] = min(idx[j], len(cum)-1)
				for idx[j] > 0 && adv[idx[j]].Advantage <= 0 { // a zero-width bucket: step back to its owner
					idx[j]--
				}
			}
			return idx
		}
		for j := range idx {
			idx[j] = epochIndex(cfg.Seed, len(trainEx), (step-1)*cfg.PerDeviceTrainBatchSize+j)
		}
		return idx
	}

	chat := &model.Chatter{Ctx: ctx, LM: lm, BatchSize: 16, MaxTokens: cfg.MaxResponseLength, Seed: cfg.Seed}
	validate := func() (float64, error) {
		if reward == nil {
			return math.NaN(), nil
		}
		lm.Training = false
		defer func() { lm.Training = true }()
		return meanReward(ctx, chat, reward, valEx)
	}
	bestReward, bestStep := math.Inf(-1), 0
	lossCfg := cfg.lossConfig()
	warmup := cfg.WarmupSteps
	lm.Training = true
	err = loop.drive(ctx, func(ctx context.Context, step int) (stepResult, error) {
		idx := indicesAt(step)
		batch := make([]OfflineExample, len(idx))
		meta := make([]AdvantageRecord, len(idx))
		tokens := 0
		for j, k := range idx {
			batch[j], meta[j] = trainEx[k], adv[k]
			tokens += len(trainEx[k].Prompt) + len(trainEx[k].Response)
		}
		lr := learningRate(cfg.LRSchedulerType, cfg.LearningRate, warmup, loop.steps, step)
		s := rt.NewScope()
		logp, mask := responseLogprobs(s, lm.Model, batch)
		B := int64(len(batch))
		rw := make([]float32, len(batch))
		av := make([]float32, len(batch))
		for j, m := range meta {
			rw[j], av[j] = float32(m.Reward), float32(m.Advantage)
		}
		// log pi_ref per token is needed only through its sum for the sequence ratio, except by a_lol_seq; the
		// reference's per-token values come from one no-grad pass over the batch.
		refTok := refLogprobs(s, ref.Model, batch)
		loss := ALoLLoss(s, lossCfg, logp, refTok, mask,
			s.FromData(rw, torch.Float32, []int64{B}, dev), s.FromData(av, torch.Float32, []int64{B}, dev))
		s.Backward(loss)
		lv := s.Item(loss)
		// Importance weights, for the log: rho = exp(sum_t log pi_theta - log pi_ref) per sequence.
		seqLogp := s.Float32s(s.Sum(s.Mul(s.Detach(logp), mask), 1, false))
		err := s.Err()
		s.Close()
		if err != nil {
			return stepResult{}, fmt.Errorf("step %d: %w", step, err)
		}
		gradNorm, err := t.opt.clipAndStep(t.params, cfg.MaxGradNorm, lr, lv, job.state.Checkpoint)
		if err != nil {
			return stepResult{}, fmt.Errorf("step %d: %w", step, err)
		}
		var rhoSum, clipped, advSum, rSum float64
		for j := range batch {
			rho := math.Exp(float64(seqLogp[j]) - meta[j].RefLogp)
			rhoSum += rho
			if rho < 1-cfg.PPOClip || rho > 1+cfg.PPOClip {
				clipped++
			}
			advSum += meta[j].Advantage
			rSum += meta[j].Reward
		}
		n := float64(len(batch))
		m := Metrics{Loss: lv, LR: lr, GradNorm: gradNorm, Extra: map[string]float64{"reward_mean": rSum / n, "importance_weight_mean": rhoSum / n}}
		if usesAdvantage(cfg.Algorithm) {
			m.Extra["advantage_mean"], m.Extra["positive_fraction"] = advSum/n, posFrac
		}
		if cfg.PPOClip > 0 {
			m.Extra["clip_fraction"] = clipped / n
		}
		if cfg.MaxSeconds > 0 && step < loop.steps && time.Since(began).Seconds() >= cfg.MaxSeconds {
			job.logf("wall-clock budget of %.0f s spent at step %d of %d: the run ends here", cfg.MaxSeconds, step, loop.steps)
			loop.steps, job.state.TotalSteps = step, step
		}
		if step%cfg.EvalSteps == 0 || step == loop.steps {
			vr, err := validate()
			if err != nil {
				return stepResult{}, fmt.Errorf("step %d, validation: %w", step, err)
			}
			if !math.IsNaN(vr) {
				m.Extra["val_reward"] = vr
				if vr > bestReward {
					bestReward, bestStep = vr, step
					if err := saveWeights(rt, filepath.Join(run.Dir, "best"), t.trainable); err != nil {
						return stepResult{}, fmt.Errorf("step %d: saving the best weights: %w", step, err)
					}
				}
			}
		}
		return stepResult{metrics: m, tokens: tokens, log: true}, nil
	})
	if err != nil {
		return err
	}
	if bestStep > 0 && bestStep != loop.steps {
		// The paper keeps the checkpoint with the best mean validation reward.
		if err := loadWeights(rt, filepath.Join(run.Dir, "best"), t.trainable); err != nil {
			return err
		}
		job.logf("final weights: step %d, the best validation reward (%.4f)", bestStep, bestReward)
	}
	return loop.finish(lm, t.trainable)
}

func orNone(s string) string {
	if s == "" {
		return "none (no checkpoint was written yet)"
	}
	return s
}

// responseLogprobs runs the model over prompt+response rows (right-padded) and returns log p of each next token
// [B, T-1] with the mask [B, T-1] that is 1 on response tokens.
func responseLogprobs(s *torch.Scope, m *model.Model, batch []OfflineExample) (torch.Tensor, torch.Tensor) {
	T := 0
	for _, ex := range batch {
		T = max(T, len(ex.Prompt)+len(ex.Response))
	}
	B := len(batch)
	ids := make([][]int, B)
	next := make([]int64, B*(T-1))
	mask := make([]float32, B*(T-1))
	for b, ex := range batch {
		row := make([]int, T)
		copy(row, ex.Prompt)
		copy(row[len(ex.Prompt):], ex.Response)
		ids[b] = row
		for t := 0; t+1 < T; t++ {
			next[b*(T-1)+t] = int64(row[t+1])
			if t+1 >= len(ex.Prompt) && t+1 < len(ex.Prompt)+len(ex.Response) {
				mask[b*(T-1)+t] = 1
			}
		}
	}
	dev := m.Opts.Device
	in := make([][]int, B)
	for b := range ids {
		in[b] = ids[b][:T-1]
	}
	lp := s.LogSoftmax(m.TrainLogits(s, in), -1)
	idx := s.FromData(next, torch.Int64, []int64{int64(B), int64(T - 1), 1}, dev)
	logp := s.Reshape(s.Gather(lp, 2, idx), int64(B), int64(T-1))
	return logp, s.FromData(mask, torch.Float32, []int64{int64(B), int64(T - 1)}, dev)
}

// refLogprobs is responseLogprobs under the frozen reference, without gradient.
func refLogprobs(s *torch.Scope, ref *model.Model, batch []OfflineExample) torch.Tensor {
	ns := ref.RT.NewScope().NoGrad()
	defer ns.Close()
	lp, _ := responseLogprobs(ns, ref, batch)
	out := s.Clone(s.Detach(lp))
	if err := ns.Err(); err != nil {
		s.Fail(err)
	}
	return out
}

// Mean is the mean of xs (NaN for none).
func Mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func formatFloats(xs []float64) string {
	out := "["
	for i, x := range xs {
		if i > 0 {
			out += " "
		}
		out += fmt.Sprintf("%.4f", x)
	}
	return out + "]"
}

// saveWeights writes the trainable tensors to dir/weights.safetensors atomically.
func saveWeights(rt *torch.Runtime, dir string, trainable []model.NamedTensor) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	s := rt.NewScope().NoGrad()
	defer s.Close()
	var ts []safetensors.Tensor
	for _, p := range trainable {
		t, err := tensorBytes(s, p.Tensor)
		if err != nil {
			return err
		}
		t.Name = p.Name
		ts = append(ts, t)
	}
	return safetensors.Write(filepath.Join(dir, "weights.safetensors"), ts, map[string]string{"format": "pt"})
}

// loadWeights reads saveWeights' file back into the trainable tensors.
func loadWeights(rt *torch.Runtime, dir string, trainable []model.NamedTensor) error {
	f, err := safetensors.Open(filepath.Join(dir, "weights.safetensors"))
	if err != nil {
		return err
	}
	defer f.Close()
	s := rt.NewScope().NoGrad()
	defer s.Close()
	for _, p := range trainable {
		if err := loadInto(s, f, p.Name, p.Tensor); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
	}
	return nil
}
