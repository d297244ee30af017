package train

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
)

// RewardConfig configures reward-model training under TRL's RewardConfig names: a causal LM (or a reward model
// to keep training) becomes a *ForSequenceClassification model with one output, trained on preference pairs
// with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), plus center_rewards_coefficient *
// mean((r_chosen + r_rejected)^2) when set (TRL's incentive to keep rewards centred on 0).
type RewardConfig struct {
	ModelNameOrPath          string  `json:"model_name_or_path"`
	DatasetPath              string  `json:"dataset_path"`
	LearningRate             float64 `json:"learning_rate"`
	MaxSteps                 int     `json:"max_steps"`
	PerDeviceTrainBatchSize  int     `json:"per_device_train_batch_size"` // pairs per step
	MaxLength                int     `json:"max_length"`                  // longer conversations are cut from the left
	CenterRewardsCoefficient float64 `json:"center_rewards_coefficient"`
	MaxGradNorm              float64 `json:"max_grad_norm"`
	WeightDecay              float64 `json:"weight_decay"`
	EvalFraction             float64 `json:"eval_fraction"`
	EvalSteps                int     `json:"eval_steps"`
	Seed                     uint64  `json:"seed"`
	SaveSteps                int     `json:"save_steps"`
	SaveTotalLimit           int     `json:"save_total_limit"`
	Device                   string  `json:"device"`
	DType                    string  `json:"dtype"`
}

// Defaults fills unset fields.
func (c *RewardConfig) Defaults() {
	setDefault(&c.LearningRate, 1e-4)
	setDefault(&c.MaxSteps, 100)
	setDefault(&c.PerDeviceTrainBatchSize, 8)
	setDefault(&c.MaxLength, 256)
	setDefault(&c.MaxGradNorm, 1.0)
	setDefault(&c.EvalSteps, 25)
	setDefault(&c.SaveSteps, 50)
	setDefault(&c.SaveTotalLimit, 2)
	defaultDevice(&c.Device, &c.DType)
}

func (c *RewardConfig) check() error {
	switch {
	case c.ModelNameOrPath == "":
		return fmt.Errorf("a model folder is required (--model)")
	case c.DatasetPath == "":
		return fmt.Errorf("preference pairs are required (--data)")
	case c.LearningRate <= 0 || c.MaxSteps <= 0 || c.PerDeviceTrainBatchSize <= 0 || c.MaxLength < 2:
		return fmt.Errorf("learning rate, max steps, batch size and max length must be positive")
	case c.EvalFraction < 0 || c.EvalFraction >= 1:
		return fmt.Errorf("eval fraction %v must be in [0, 1)", c.EvalFraction)
	case c.CenterRewardsCoefficient < 0:
		return fmt.Errorf("center_rewards_coefficient %v must not be negative", c.CenterRewardsCoefficient)
	}
	return nil
}

func (c RewardConfig) base() modelBase { return modelBase{c.ModelNameOrPath, nil} }

// PreferencePair is one tokenized comparison: the same prompt answered twice, the chosen reply preferred.
type PreferencePair struct {
	Chosen, Rejected []int
}

// preferenceRecord is one line of a preference file: keel's {"messages": prompt, "chosen": "...", "rejected":
// "..."}, or TRL's conversational {"chosen": [messages], "rejected": [messages]}.
type preferenceRecord struct {
	Messages []tokenizer.Message `json:"messages"`
	Chosen   json.RawMessage     `json:"chosen"`
	Rejected json.RawMessage     `json:"rejected"`
}

// LoadPreferences reads a JSONL file of preference pairs and renders each side as one finished conversation
// with the tokenizer's chat template (as the reward model will read it), cut from the left to maxLength.
// Errors name file:line.
func LoadPreferences(path string, tok tokenizer.Tokenizer, maxLength int) ([]PreferencePair, error) {
	var out []PreferencePair
	side := func(prompt []tokenizer.Message, raw json.RawMessage, name string) ([]int, error) {
		var msgs []tokenizer.Message
		var reply string
		switch {
		case len(raw) == 0:
			return nil, fmt.Errorf("needs %q", name)
		case json.Unmarshal(raw, &reply) == nil:
			if len(prompt) == 0 {
				return nil, fmt.Errorf("%q is a reply: give the prompt as \"messages\" (or give whole conversations)", name)
			}
			msgs = append(append(msgs, prompt...), tokenizer.Message{Role: "assistant", Content: reply})
		case json.Unmarshal(raw, &msgs) == nil && len(msgs) > 0:
			msgs = append(append([]tokenizer.Message(nil), prompt...), msgs...)
		default:
			return nil, fmt.Errorf("%q must be a reply (a string) or a conversation (a list of {role, content})", name)
		}
		if msgs[len(msgs)-1].Role != "assistant" {
			return nil, fmt.Errorf("%q must end with the assistant's reply", name)
		}
		ids, err := tokenizer.ChatConversation(tok, msgs)
		if err != nil {
			return nil, err
		}
		if len(ids) > maxLength {
			ids = ids[len(ids)-maxLength:]
		}
		return ids, nil
	}
	err := readJSONL(path, func(raw []byte) error {
		var r preferenceRecord
		if err := json.Unmarshal(raw, &r); err != nil {
			return fmt.Errorf("not a JSON object: %v", err)
		}
		var p PreferencePair
		var err error
		if p.Chosen, err = side(r.Messages, r.Chosen, "chosen"); err != nil {
			return err
		}
		if p.Rejected, err = side(r.Messages, r.Rejected, "rejected"); err != nil {
			return err
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("%s: %d preference pairs: a reward model needs at least 2 (one to train on, one to check)", path, len(out))
	}
	return out, nil
}

// RunRewardModel trains a reward model in the run folder; final/ is a *ForSequenceClassification folder that
// --reward rm:DIR and PPO's value_model_path read.
func RunRewardModel(ctx context.Context, rt *torch.Runtime, run *Run, cfg RewardConfig, opts Options) (err error) {
	job, dev, dt, err := beginRun(run, "rm", &cfg, opts)
	if err != nil {
		return err
	}
	defer job.end(&err)
	lm, err := model.Load(rt, cfg.ModelNameOrPath, model.Options{Device: dev, DType: dt})
	if err != nil {
		return err
	}
	defer lm.Close()
	if err := lm.MakeClassifier(1, cfg.Seed); err != nil {
		return err
	}
	pairs, err := LoadPreferences(cfg.DatasetPath, lm.Tokenizer, cfg.MaxLength)
	if err != nil {
		return err
	}
	trainPairs, evalPairs := heldOut(pairs, cfg.EvalFraction, 0, cfg.Seed, 0x7e3)
	job.logf("reward model from %s (%s %s): %d pairs, %d held out", cfg.ModelNameOrPath, dev, dt, len(pairs), len(evalPairs))

	lm.Training = true
	t, err := startTraining(rt, lm, nil, nil, torch.AdamWConfig{LR: cfg.LearningRate, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: cfg.WeightDecay},
		&stepLoop{run: run, job: job, opts: opts, base: cfg.base(), seed: cfg.Seed, steps: cfg.MaxSteps, saveEvery: cfg.SaveSteps, keep: cfg.SaveTotalLimit})
	if err != nil {
		return err
	}
	defer t.close()
	loop := t.loop
	err = loop.drive(ctx, func(ctx context.Context, step int) (stepResult, error) {
		batch := batchAt(trainPairs, cfg.Seed, (step-1)*cfg.PerDeviceTrainBatchSize, min(cfg.PerDeviceTrainBatchSize, len(trainPairs)))
		s := rt.NewScope()
		loss, acc, margin := preferenceLoss(s, lm.Model, batch, cfg.CenterRewardsCoefficient)
		s.Backward(loss)
		v := s.Item(loss)
		err := s.Err()
		s.Close()
		if err != nil {
			return stepResult{}, fmt.Errorf("step %d: %w", step, err)
		}
		gradNorm, err := t.opt.clipAndStep(t.params, cfg.MaxGradNorm, cfg.LearningRate, v, job.state.Checkpoint)
		if err != nil {
			return stepResult{}, fmt.Errorf("step %d: %w", step, err)
		}
		tokens := 0
		for _, p := range batch {
			tokens += len(p.Chosen) + len(p.Rejected)
		}
		m := Metrics{Loss: v, LR: cfg.LearningRate, GradNorm: gradNorm, Extra: map[string]float64{"accuracy": acc, "margin": margin}}
		if len(evalPairs) > 0 && (step%cfg.EvalSteps == 0 || step == cfg.MaxSteps || step == loop.start+1) {
			ev, evAcc, err := evalPreferences(rt, lm.Model, evalPairs, cfg.PerDeviceTrainBatchSize)
			if err != nil {
				return stepResult{}, err
			}
			m.EvalLoss = &ev
			m.Extra["eval_accuracy"] = evAcc
		}
		return stepResult{metrics: m, tokens: tokens, log: true}, nil
	})
	if err != nil {
		return err
	}
	return loop.finish(lm, t.trainable)
}

// preferenceLoss is the mean Bradley-Terry loss of a batch of pairs (with the centring term), the share of pairs
// ranked right and the mean margin r_chosen - r_rejected.
func preferenceLoss(s *torch.Scope, m *model.Model, batch []PreferencePair, center float64) (loss torch.Tensor, accuracy, margin float64) {
	seqs := make([][]int, 0, 2*len(batch))
	for _, p := range batch {
		seqs = append(seqs, p.Chosen)
	}
	for _, p := range batch {
		seqs = append(seqs, p.Rejected)
	}
	r := m.TrainScores(s, seqs) // [2B, 1]
	B := int64(len(batch))
	chosen, rejected := s.Narrow(r, 0, 0, B), s.Narrow(r, 0, B, B)
	diff := s.Sub(chosen, rejected)
	// log sigmoid(c - r) is the chosen side's log-softmax over the pair: stable for any margin.
	logSig := s.Narrow(s.LogSoftmax(s.Cat([]torch.Tensor{rejected, chosen}, 1), -1), 1, 1, 1)
	loss = s.Neg(s.Mean(logSig, torch.AllDims, false))
	if center > 0 {
		sum := s.Add(chosen, rejected)
		loss = s.Add(loss, s.MulScalar(s.Mean(s.Mul(sum, sum), torch.AllDims, false), center))
	}
	for _, d := range s.Float32s(s.Detach(diff)) {
		if d > 0 {
			accuracy++
		}
		margin += float64(d)
	}
	return loss, accuracy / float64(B), margin / float64(B)
}

// evalPreferences is the held-out pairs' mean loss and accuracy.
func evalPreferences(rt *torch.Runtime, m *model.Model, pairs []PreferencePair, batchSize int) (float64, float64, error) {
	training := m.Training
	m.Training = false
	defer func() { m.Training = training }()
	var lossSum, accSum float64
	for i := 0; i < len(pairs); i += batchSize {
		batch := pairs[i:min(i+batchSize, len(pairs))]
		s := rt.NewScope().NoGrad()
		loss, acc, _ := preferenceLoss(s, m, batch, 0)
		v := s.Item(loss)
		err := s.Err()
		s.Close()
		if err != nil {
			return 0, 0, err
		}
		lossSum += v * float64(len(batch))
		accSum += acc * float64(len(batch))
	}
	return lossSum / float64(len(pairs)), accSum / float64(len(pairs)), nil
}
