package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/atomicfile"
)

// PPOConfig configures a PPO-max fine-tune (Zheng et al. 2023) under TRL's option names where there is one. The
// policy starts from an SFT model, which also serves as the frozen reference; the critic is a value head on the
// policy's last hidden states, or (value_model_path, PPO-max's recipe) a network of its own started from a reward
// model, trained with the policy after critic_warmup_steps of its own.
type PPOConfig struct {
	ModelNameOrPath   string            `json:"model_name_or_path"`
	PromptsPath       string            `json:"prompts_path"`
	Reward            string            `json:"reward"`
	LearningRate      float64           `json:"learning_rate"`
	MaxSteps          int               `json:"max_steps"`          // PPO iterations (rollouts, then updates)
	RolloutBatchSize  int               `json:"rollout_batch_size"` // responses per iteration (the experience buffer)
	MiniBatchSize     int               `json:"mini_batch_size"`
	NumPPOEpochs      int               `json:"num_ppo_epochs"`
	KLCoef            float64           `json:"kl_coef"` // token-level KL penalty to the reference
	Cliprange         float64           `json:"cliprange"`
	CliprangeValue    float64           `json:"cliprange_value"`
	VFCoef            float64           `json:"vf_coef"`
	Gamma             float64           `json:"gamma"`
	Lam               float64           `json:"lam"`
	WhitenRewards     bool              `json:"whiten_rewards"`   // whiten the per-token rewards before GAE
	RewardNormalize   bool              `json:"reward_normalize"` // PPO-max: (r - running mean) / running std ...
	RewardClip        float64           `json:"reward_clip"`      // ... clipped to [-reward_clip, reward_clip]
	MaxGradNorm       float64           `json:"max_grad_norm"`
	EntCoef           float64           `json:"ent_coef"` // entropy bonus (off in PPO-max)
	PtxCoef           float64           `json:"ptx_coef"` // pretraining loss on ptx_data_path (off by default)
	PtxDataPath       string            `json:"ptx_data"` // SFT data for the ptx term
	Temperature       float64           `json:"temperature"`
	TopP              float64           `json:"top_p"`
	RepetitionPenalty float64           `json:"repetition_penalty"`
	MaxNewTokens      int               `json:"max_new_tokens"`
	MaxPromptLength   int               `json:"max_prompt_length"` // prompts are cut from the left to this
	CriticWarmupSteps int               `json:"critic_warmup_steps"`
	ValueModelPath    string            `json:"value_model_path"` // a reward model the critic starts from (PPO-max); "": a value head on the policy
	KLTarget          float64           `json:"kl_target"`        // collapse monitor: ref KL per response above this ...
	KLStopSteps       int               `json:"kl_stop_steps"`    // ... for this many iterations in a row stops the job (0: never)
	AdamBeta1         float64           `json:"adam_beta1"`
	AdamBeta2         float64           `json:"adam_beta2"`
	AdamEpsilon       float64           `json:"adam_epsilon"`
	WeightDecay       float64           `json:"weight_decay"`
	Seed              uint64            `json:"seed"`
	SaveSteps         int               `json:"save_steps"`
	SaveTotalLimit    int               `json:"save_total_limit"`
	Device            string            `json:"device"`
	DType             string            `json:"dtype"`
	LoRA              *model.LoRAConfig `json:"lora,omitempty"`
}

// Defaults fills unset fields with PPO-max's settings (buffer and batch sizes scaled to a CPU).
func (c *PPOConfig) Defaults() {
	setDefault(&c.LearningRate, 1e-5)
	setDefault(&c.MaxSteps, 20)
	setDefault(&c.RolloutBatchSize, 32)
	setDefault(&c.MiniBatchSize, 8)
	setDefault(&c.NumPPOEpochs, 1)
	setDefault(&c.Cliprange, 0.2)
	setDefault(&c.CliprangeValue, 0.2)
	setDefault(&c.VFCoef, 1.0)
	setDefault(&c.Gamma, 1.0)
	setDefault(&c.Lam, 0.95)
	setDefault(&c.RewardClip, 5)
	setDefault(&c.MaxGradNorm, 1.0)
	setDefault(&c.Temperature, 0.8)
	setDefault(&c.TopP, 0.9)
	setDefault(&c.RepetitionPenalty, 1.1)
	setDefault(&c.MaxNewTokens, 64)
	setDefault(&c.MaxPromptLength, 512)
	setDefault(&c.AdamBeta1, 0.9)
	setDefault(&c.AdamBeta2, 0.95)
	setDefault(&c.AdamEpsilon, 1e-8)
	setDefault(&c.SaveSteps, 5)
	setDefault(&c.SaveTotalLimit, 2)
	defaultDevice(&c.Device, &c.DType)
}

func (c *PPOConfig) check() error {
	switch {
	case c.ModelNameOrPath == "":
		return fmt.Errorf("a model folder is required (--model)")
	case c.PromptsPath == "":
		return fmt.Errorf("a prompts file is required (--prompts)")
	case c.LearningRate <= 0 || c.MaxSteps <= 0 || c.RolloutBatchSize <= 0 || c.MiniBatchSize <= 0 || c.NumPPOEpochs <= 0 || c.MaxNewTokens <= 0:
		return fmt.Errorf("--lr, --steps, --rollouts, --mini-batch, --ppo-epochs and --max-new-tokens must be positive")
	case c.KLCoef < 0 || c.Cliprange <= 0 || c.CliprangeValue <= 0 || c.Gamma <= 0 || c.Gamma > 1 || c.Lam < 0 || c.Lam > 1:
		return fmt.Errorf("--kl-coef must be >= 0, --cliprange and --cliprange-value > 0, --gamma in (0, 1], --lam in [0, 1]")
	case c.PtxCoef > 0 && c.PtxDataPath == "":
		return fmt.Errorf("--ptx-coef needs --ptx-data (SFT data for the pretraining term)")
	case c.KLStopSteps > 0 && c.KLTarget <= 0:
		return fmt.Errorf("--kl-stop-steps needs --kl-target (the ref KL the monitor holds the policy under)")
	}
	return nil
}

// LoadPrompts reads JSONL lines of {"messages": [...]} ending with the user's turn (a trailing assistant message
// is dropped: a dataset of chats serves as prompts). Errors name file:line.
func LoadPrompts(path string) ([][]tokenizer.Message, error) {
	var out [][]tokenizer.Message
	err := readJSONL(path, func(raw []byte) error {
		var rec struct {
			Messages []tokenizer.Message `json:"messages"`
		}
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		msgs := rec.Messages
		if n := len(msgs); n > 0 && msgs[n-1].Role == "assistant" {
			msgs = msgs[:n-1]
		}
		if len(msgs) == 0 || msgs[len(msgs)-1].Role != "user" {
			return fmt.Errorf("needs \"messages\" ending with the user's turn")
		}
		out = append(out, msgs)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no prompts", path)
	}
	return out, nil
}

// ppoState rides in each checkpoint: what a resumed run needs besides the weights and the optimizer.
type ppoState struct {
	Moments RunningMoments `json:"reward_moments"`
	Over    int            `json:"kl_over_target"`
}

// MarshalJSON and UnmarshalJSON keep RunningMoments' fields private to the package's API.
func (m RunningMoments) MarshalJSON() ([]byte, error) {
	return json.Marshal([3]float64{m.n, m.mean, m.m2})
}

// UnmarshalJSON implements json.Unmarshaler.
func (m *RunningMoments) UnmarshalJSON(b []byte) error {
	var v [3]float64
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	m.n, m.mean, m.m2 = v[0], v[1], v[2]
	return nil
}

// ErrCollapse marks a run the collapse monitor stopped.
type ErrCollapse struct{ Reason string }

func (e ErrCollapse) Error() string { return "collapse monitor: " + e.Reason }

// rollout is one response of the experience buffer with its per-token figures.
type rollout struct {
	ex                  OfflineExample
	score               float64 // the raw reward
	logpOld, logpRef    []float64
	valuesOld           []float64
	advantages, returns []float64
}

// RunPPO trains the policy online against reward until max_steps, cancellation, the collapse monitor or an
// error.
func RunPPO(ctx context.Context, rt *torch.Runtime, run *Run, cfg PPOConfig, reward Reward, opts Options) (err error) {
	job, dev, dt, err := beginRun(run, "ppo", &cfg, opts)
	if err != nil {
		return err
	}
	defer job.end(&err)
	prompts, err := LoadPrompts(cfg.PromptsPath)
	if err != nil {
		return err
	}
	ref, err := model.Load(rt, cfg.ModelNameOrPath, model.Options{Device: dev, DType: dt})
	if err != nil {
		return err
	}
	defer ref.Close()
	lm, err := model.Load(rt, cfg.ModelNameOrPath, model.Options{Device: dev, DType: dt})
	if err != nil {
		return err
	}
	defer lm.Close()
	promptIDs := make([][]int, len(prompts))
	for i, p := range prompts {
		ids, err := tokenizer.ChatPrompt(lm.Tokenizer, p)
		if err != nil {
			return fmt.Errorf("%s: prompt %d: %w", cfg.PromptsPath, i+1, err)
		}
		if len(ids) > cfg.MaxPromptLength {
			ids = ids[len(ids)-cfg.MaxPromptLength:]
		}
		promptIDs[i] = ids
	}
	var ptx []Example
	if cfg.PtxCoef > 0 {
		exs, err := LoadDataset(cfg.PtxDataPath, lm.Tokenizer)
		if err != nil {
			return err
		}
		ptx = Pack(exs, 256)
	}
	var head critic
	if cfg.ValueModelPath != "" {
		head, err = newModelCritic(rt, cfg.ValueModelPath, model.Options{Device: dev, DType: dt}, lm.Tokenizer)
		job.logf("critic: the reward model %s, every weight trained", cfg.ValueModelPath)
	} else {
		head, err = newLinearHead(rt, dev, lm.Config.HiddenSize, cfg.Seed)
	}
	if err != nil {
		return err
	}
	defer head.close()
	var st ppoState
	t, err := startTraining(rt, lm, cfg.LoRA, head.params(), torch.AdamWConfig{LR: cfg.LearningRate, Beta1: cfg.AdamBeta1, Beta2: cfg.AdamBeta2, Eps: cfg.AdamEpsilon, WeightDecay: cfg.WeightDecay},
		&stepLoop{run: run, job: job, opts: opts, base: modelBase{cfg.ModelNameOrPath, cfg.LoRA}, seed: cfg.Seed, steps: cfg.MaxSteps, saveEvery: cfg.SaveSteps, keep: cfg.SaveTotalLimit,
			// Only checkpoints written while the ref KL is under target count as good.
			canSave:   func() bool { return st.Over == 0 },
			saveExtra: func(ck string) error { return atomicfile.WriteJSON(filepath.Join(ck, "ppo_state.json"), st) }})
	if err != nil {
		return err
	}
	defer t.close()
	loop, ck := t.loop, t.resumed
	if ck != "" { // the running reward statistics continue where they were
		raw, err := os.ReadFile(filepath.Join(ck, "ppo_state.json"))
		if err == nil {
			err = json.Unmarshal(raw, &st)
		}
		if err != nil {
			return fmt.Errorf("%s: ppo_state.json: %v", ck, err)
		}
	}
	eos := lm.EOS()
	job.logf("model %s, %d prompts; %d iterations of %d rollouts (kl_coef %g, lr %g)", cfg.ModelNameOrPath, len(prompts), cfg.MaxSteps, cfg.RolloutBatchSize, cfg.KLCoef, cfg.LearningRate)
	err = loop.drive(ctx, func(ctx context.Context, step int) (stepResult, error) {
		// A cancel is honoured between the phases of an iteration too (one of rollouts, scoring and epochs can
		// take minutes): until the first update the weights are the previous step's, which may be saved.
		tokens := 0
		// 1. Rollouts from the policy.
		r := rand.New(rand.NewPCG(cfg.Seed, uint64(step)))
		batch := make([]rollout, cfg.RolloutBatchSize)
		rows := make([][]int, len(batch))
		for i := range batch {
			k := r.IntN(len(prompts))
			batch[i].ex = OfflineExample{Sample: Sample{Messages: prompts[k]}, Prompt: promptIDs[k]}
			rows[i] = promptIDs[k]
		}
		lm.Training = false
		gen, err := lm.GenerateText(ctx, rows, model.TextConfig{GenerateConfig: model.GenerateConfig{MaxTokens: cfg.MaxNewTokens,
			Sampling: model.Sampling{Temperature: cfg.Temperature, TopP: cfg.TopP, RepetitionPenalty: cfg.RepetitionPenalty, Seed: cfg.Seed*7919 + uint64(step)}}})
		if err != nil {
			if ctx.Err() != nil {
				return stepResult{}, errCancelledBeforeUpdate
			}
			return stepResult{}, fmt.Errorf("step %d, rollouts: %w", step, err)
		}
		samples := make([]Sample, len(batch))
		for i, g := range gen {
			ids := g.IDs
			if len(ids) == 0 {
				ids = []int{eos[0]}
			}
			batch[i].ex.Response, batch[i].ex.Sample.Response = ids, g.Text
			samples[i] = batch[i].ex.Sample
			tokens += len(rows[i]) + len(ids)
		}
		// 2. Scores, normalised and clipped with running statistics (PPO-max).
		scores, err := ScoreChecked(ctx, reward, samples)
		if loop.cancelRequested(ctx) {
			return stepResult{}, errCancelledBeforeUpdate
		}
		if err != nil {
			return stepResult{}, fmt.Errorf("step %d: %w", step, err)
		}
		st.Moments.Update(scores...)
		// 3. Old policy, values and reference, without gradient; per-token KL rewards; GAE.
		if err := ppoOldPass(rt, lm.Model, ref.Model, head, batch); err != nil {
			return stepResult{}, fmt.Errorf("step %d: %w", step, err)
		}
		var refKL, logpSum, lenSum float64
		var allRewards [][]float64
		for i := range batch {
			b := &batch[i]
			b.score = scores[i]
			s := b.score
			if cfg.RewardNormalize {
				s = st.Moments.Normalize(s, cfg.RewardClip)
			}
			rw := KLRewards(b.logpOld, b.logpRef, s, cfg.KLCoef)
			allRewards = append(allRewards, rw)
			for t := range b.logpOld {
				refKL += b.logpOld[t] - b.logpRef[t]
				logpSum += b.logpOld[t]
			}
			lenSum += float64(len(b.logpOld))
		}
		if cfg.WhitenRewards {
			whiten(allRewards, false)
		}
		for i := range batch {
			batch[i].advantages, batch[i].returns = GAE(allRewards[i], batch[i].valuesOld, cfg.Gamma, cfg.Lam)
		}
		advs := make([][]float64, len(batch))
		for i := range batch {
			advs[i] = batch[i].advantages
		}
		whiten(advs, true)
		// 4. PPO epochs over minibatches.
		warm := step <= cfg.CriticWarmupSteps
		lm.Training = true
		var agg PPOStats
		var lossSum, entSum, gradSum float64
		updates := 0
		for epoch := 0; epoch < cfg.NumPPOEpochs; epoch++ {
			order := r.Perm(len(batch))
			for m0 := 0; m0 < len(order); m0 += cfg.MiniBatchSize {
				if loop.cancelRequested(ctx) { // mid-update: these weights are no step's, so nothing is saved
					return stepResult{}, errCancelled
				}
				var mb []rollout
				for _, k := range order[m0:min(m0+cfg.MiniBatchSize, len(order))] {
					mb = append(mb, batch[k])
				}
				s := rt.NewScope()
				loss, stats, ent := ppoMinibatchLoss(s, lm.Model, head, cfg, mb, warm)
				if cfg.PtxCoef > 0 && !warm {
					pb := make([]Example, cfg.MiniBatchSize)
					for j := range pb {
						pb[j] = ptx[r.IntN(len(ptx))]
					}
					loss = s.Add(loss, s.MulScalar(batchLoss(s, lm.Model, pb), cfg.PtxCoef))
				}
				s.Backward(loss)
				lv := s.Item(loss)
				err := s.Err()
				s.Close()
				if err != nil {
					return stepResult{}, fmt.Errorf("step %d: %w", step, err)
				}
				g, err := t.opt.clipAndStep(t.params, cfg.MaxGradNorm, cfg.LearningRate, lv, job.state.Checkpoint)
				if err != nil {
					return stepResult{}, fmt.Errorf("step %d: %w", step, err)
				}
				lossSum, entSum, gradSum = lossSum+lv, entSum+ent, gradSum+g
				agg.PolicyLoss += stats.PolicyLoss
				agg.ValueLoss += stats.ValueLoss
				agg.ApproxKL += stats.ApproxKL
				agg.ClipFrac += stats.ClipFrac
				agg.ValueClipFrac += stats.ValueClipFrac
				updates++
			}
		}
		u := float64(max(updates, 1))
		n := float64(len(batch))
		rMean, rStd := MeanStd(scores)
		kl := refKL / n
		m := Metrics{Loss: lossSum / u, LR: cfg.LearningRate, GradNorm: gradSum / u,
			Extra: map[string]float64{"reward_mean": rMean, "reward_std": rStd, "ref_kl": kl, "approx_kl": agg.ApproxKL / u,
				"clip_fraction": agg.ClipFrac / u, "value_clip_fraction": agg.ValueClipFrac / u, "policy_loss": agg.PolicyLoss / u,
				"value_loss": agg.ValueLoss / u, "entropy": entSum / u, "response_length": lenSum / n, "perplexity": math.Exp(-logpSum / lenSum)}}
		if warm {
			m.Extra["critic_warmup"] = 1
		}
		// 5. The collapse monitor: ref KL above target for kl_stop_steps iterations in a row stops the run, once
		// this iteration is logged.
		if cfg.KLTarget > 0 && kl > cfg.KLTarget {
			st.Over++
		} else {
			st.Over = 0
		}
		res := stepResult{metrics: m, tokens: tokens, log: true}
		if cfg.KLStopSteps > 0 && st.Over >= cfg.KLStopSteps {
			res.then = ErrCollapse{fmt.Sprintf("ref KL %.3f above the target %.3f for %d iterations in a row at step %d (perplexity %.2f, response length %.1f); stopped; last good checkpoint: %s",
				kl, cfg.KLTarget, st.Over, step, m.Extra["perplexity"], m.Extra["response_length"], orNone(job.state.Checkpoint))}
		}
		return res, nil
	})
	if err != nil {
		return err
	}
	// The value head is the trainer's, not the model's: the export is the policy alone.
	return loop.finish(lm, t.trainable[:len(t.trainable)-len(head.params())])
}

// whiten scales values (all rows together) to standard deviation 1 and, when shift, mean 0; without shift the
// mean stays in place (TRL whitens rewards so).
func whiten(rows [][]float64, shift bool) {
	var all []float64
	for _, r := range rows {
		all = append(all, r...)
	}
	m, sd := MeanStd(all)
	if len(all) < 2 || sd == 0 {
		return
	}
	for _, r := range rows {
		for t := range r {
			if shift {
				r[t] = (r[t] - m) / sd
			} else {
				r[t] = (r[t]-m)/sd + m
			}
		}
	}
}

// critic gives V at every position of a batch of rows.
type critic interface {
	// values is V [B, T, 1] from the policy's final hidden states of the rows (the value head reads them) or the
	// rows themselves (a critic network of its own); detach: the warm-up, when the policy's states carry no
	// gradient.
	values(s *torch.Scope, policyHidden torch.Tensor, ids [][]int, detach bool) torch.Tensor
	params() []model.NamedTensor
	close()
}

// linearHead is the default critic: Linear(hidden, 1) on the policy's final hidden states (TRL's
// v_head.summary).
type linearHead struct {
	w, b  torch.Tensor
	named []model.NamedTensor
	scope *torch.Scope
}

func newLinearHead(rt *torch.Runtime, dev torch.Device, d int, seed uint64) (*linearHead, error) {
	if err := rt.ManualSeed(seed + 17); err != nil {
		return nil, err
	}
	h := &linearHead{scope: rt.NewScope()}
	s := h.scope
	h.w = s.Detach(s.MulScalar(s.Randn([]int64{1, int64(d)}, torch.Float32, dev), 1/math.Sqrt(float64(d))))
	h.b = s.Zeros([]int64{1}, torch.Float32, dev)
	h.named = []model.NamedTensor{{Name: "v_head.summary.weight", Tensor: h.w}, {Name: "v_head.summary.bias", Tensor: h.b}}
	if err := s.Err(); err != nil {
		s.Close()
		return nil, err
	}
	return h, nil
}

func (h *linearHead) values(s *torch.Scope, hidden torch.Tensor, _ [][]int, detach bool) torch.Tensor {
	if detach {
		hidden = s.Detach(hidden)
	}
	return s.Linear(hidden, h.w, h.b)
}

func (h *linearHead) params() []model.NamedTensor { return h.named }

func (h *linearHead) close() { h.scope.Close() }

// modelCritic is PPO-max's critic: a network of its own started from a reward model (trunk and score head), its
// score head read at every position, all of it trained.
type modelCritic struct {
	rm    *model.LM
	named []model.NamedTensor
}

func newModelCritic(rt *torch.Runtime, dir string, opts model.Options, policy tokenizer.Tokenizer) (*modelCritic, error) {
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("value_model_path: %w", err)
	}
	if !cfg.IsClassifier() {
		return nil, fmt.Errorf("value_model_path %s is a %s: the critic starts from a reward model (a *ForSequenceClassification checkpoint, as `keel train rm` makes)", dir, cfg.Architecture())
	}
	if cfg.Labels() != 1 {
		return nil, fmt.Errorf("value_model_path %s has %d labels: a critic gives one value", dir, cfg.Labels())
	}
	rm, err := model.Load(rt, dir, opts)
	if err != nil {
		return nil, fmt.Errorf("value_model_path: %w", err)
	}
	// The critic reads the policy's token ids: the two must share a vocabulary.
	probe := "The critic reads the policy's tokens: 12,345 of them, ¿sí? 🙂"
	if policy != nil && (rm.Tokenizer.VocabSize() != policy.VocabSize() || !slices.Equal(rm.Tokenizer.Encode(probe, true), policy.Encode(probe, true))) {
		rm.Close()
		return nil, fmt.Errorf("value_model_path %s tokenizes text differently from the policy: the critic must share the policy's vocabulary (a reward model trained from the policy's base)", dir)
	}
	rm.Training = true
	c := &modelCritic{rm: rm}
	// Its own names in checkpoints: the critic's trunk would otherwise share the policy's.
	for _, n := range rm.Names {
		c.named = append(c.named, model.NamedTensor{Name: "critic." + n.Name, Tensor: n.Tensor})
	}
	return c, nil
}

func (c *modelCritic) values(s *torch.Scope, _ torch.Tensor, ids [][]int, _ bool) torch.Tensor {
	hidden := c.rm.TrainHidden(s, ids)
	return s.Linear(hidden, s.To(c.rm.Score, torch.Float32, c.rm.Opts.Device), torch.Tensor{})
}

func (c *modelCritic) params() []model.NamedTensor { return c.named }

func (c *modelCritic) close() { c.rm.Close() }

// ppoRows right-pads prompt+response rows and returns them with the response mask [B, T-1] and the next-token
// targets [B, T-1, 1].
func ppoRows(s *torch.Scope, dev torch.Device, mb []rollout) (ids [][]int, mask, targets torch.Tensor, T int) {
	exs := make([]OfflineExample, len(mb))
	for i := range mb {
		exs[i] = mb[i].ex
	}
	for _, ex := range exs {
		T = max(T, len(ex.Prompt)+len(ex.Response))
	}
	B := len(exs)
	next := make([]int64, B*(T-1))
	m := make([]float32, B*(T-1))
	ids = make([][]int, B)
	for b, ex := range exs {
		row := make([]int, T)
		copy(row, ex.Prompt)
		copy(row[len(ex.Prompt):], ex.Response)
		ids[b] = row[:T-1]
		for t := 0; t+1 < T; t++ {
			next[b*(T-1)+t] = int64(row[t+1])
			if t+1 >= len(ex.Prompt) && t+1 < len(ex.Prompt)+len(ex.Response) {
				m[b*(T-1)+t] = 1
			}
		}
	}
	return ids, s.FromData(m, torch.Float32, []int64{int64(B), int64(T - 1)}, dev), s.FromData(next, torch.Int64, []int64{int64(B), int64(T - 1), 1}, dev), T
}

// policyPass is log p of each next token [B, T-1] and the critic's values [B, T-1] (from detached states when
// detach: the critic's warm-up trains the head alone), with the log-softmax for the entropy.
func policyPass(s *torch.Scope, m *model.Model, head critic, ids [][]int, targets torch.Tensor, detach bool) (logp, values, lp torch.Tensor) {
	logits, hidden := m.TrainForward(s, ids)
	lp = s.LogSoftmax(logits, -1)
	sh := s.Shape(targets)
	if sh == nil {
		return
	}
	logp = s.Reshape(s.Gather(lp, 2, targets), sh[0], sh[1])
	values = s.Reshape(head.values(s, hidden, ids, detach), sh[0], sh[1])
	return logp, values, lp
}

// ppoOldPass fills each rollout's log pi_old, V_old and log pi_ref over its response tokens.
func ppoOldPass(rt *torch.Runtime, policy, ref *model.Model, head critic, batch []rollout) error {
	for start := 0; start < len(batch); start += 16 {
		mb := batch[start:min(start+16, len(batch))]
		s := rt.NewScope().NoGrad()
		ids, _, targets, T := ppoRows(s, policy.Opts.Device, mb)
		logp, values, _ := policyPass(s, policy, head, ids, targets, false)
		refLogits := ref.TrainLogits(s, ids)
		refLogp := s.Reshape(s.Gather(s.LogSoftmax(refLogits, -1), 2, targets), int64(len(mb)), int64(T-1))
		lpOld, vOld, lpRef := s.Float32s(logp), s.Float32s(values), s.Float32s(refLogp)
		err := s.Err()
		s.Close()
		if err != nil {
			return err
		}
		for i := range mb {
			b := &batch[start+i]
			p := len(b.ex.Prompt)
			b.logpOld, b.valuesOld, b.logpRef = nil, nil, nil
			for t := p - 1; t < p-1+len(b.ex.Response); t++ {
				j := i*(T-1) + t
				b.logpOld = append(b.logpOld, float64(lpOld[j]))
				b.valuesOld = append(b.valuesOld, float64(vOld[j]))
				b.logpRef = append(b.logpRef, float64(lpRef[j]))
			}
		}
	}
	return nil
}

// ppoMinibatchLoss is PPOLoss on a minibatch (plus the entropy bonus when ent_coef > 0; the value loss alone
// during the critic's warm-up), with the monitors and the mean entropy over response tokens.
func ppoMinibatchLoss(s *torch.Scope, m *model.Model, head critic, cfg PPOConfig, mb []rollout, warm bool) (torch.Tensor, PPOStats, float64) {
	dev := m.Opts.Device
	ids, mask, targets, T := ppoRows(s, dev, mb)
	B := len(mb)
	grid := func(get func(r *rollout) []float64) torch.Tensor {
		out := make([]float32, B*(T-1))
		for i := range mb {
			p := len(mb[i].ex.Prompt)
			for k, v := range get(&mb[i]) {
				out[i*(T-1)+p-1+k] = float32(v)
			}
		}
		return s.FromData(out, torch.Float32, []int64{int64(B), int64(T - 1)}, dev)
	}
	logpOld := grid(func(r *rollout) []float64 { return r.logpOld })
	valuesOld := grid(func(r *rollout) []float64 { return r.valuesOld })
	adv := grid(func(r *rollout) []float64 { return r.advantages })
	ret := grid(func(r *rollout) []float64 { return r.returns })
	logp, values, lp := policyPass(s, m, head, ids, targets, warm)
	if warm {
		// The policy term carries no gradient (and the critic reads detached states): the warm-up trains the
		// value head alone, before its values steer the policy.
		logp = s.Detach(logp)
	}
	loss, stats := PPOLoss(s, PPOLossConfig{Cliprange: cfg.Cliprange, CliprangeValue: cfg.CliprangeValue, VFCoef: cfg.VFCoef}, logp, logpOld, adv, values, valuesOld, ret, mask)
	// Entropy of the policy at each response position: -sum p log p.
	ent := s.Neg(s.Sum(s.Mul(s.Exp(lp), lp), 2, false))
	n := s.Sum(mask, torch.AllDims, false)
	meanEnt := s.Div(s.Sum(s.Mul(ent, mask), torch.AllDims, false), n)
	if cfg.EntCoef > 0 && !warm {
		loss = s.Sub(loss, s.MulScalar(meanEnt, cfg.EntCoef))
	}
	return loss, stats, s.Item(s.Detach(meanEnt))
}
