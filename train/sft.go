package train

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
)

// SFTConfig configures supervised fine-tuning. Field names follow TRL's SFTConfig / transformers'
// TrainingArguments; defaults suit the small models keel trains on a CPU.
type SFTConfig struct {
	ModelNameOrPath           string            `json:"model_name_or_path"`
	DatasetPath               string            `json:"dataset_path"`
	LearningRate              float64           `json:"learning_rate"`
	MaxSteps                  int               `json:"max_steps"`
	PerDeviceTrainBatchSize   int               `json:"per_device_train_batch_size"`
	GradientAccumulationSteps int               `json:"gradient_accumulation_steps"`
	WarmupRatio               float64           `json:"warmup_ratio"`
	LRSchedulerType           string            `json:"lr_scheduler_type"` // cosine, linear, constant
	MaxGradNorm               float64           `json:"max_grad_norm"`
	WeightDecay               float64           `json:"weight_decay"`
	AdamBeta1                 float64           `json:"adam_beta1"`
	AdamBeta2                 float64           `json:"adam_beta2"`
	AdamEpsilon               float64           `json:"adam_epsilon"`
	Seed                      uint64            `json:"seed"`
	MaxSeqLength              int               `json:"max_seq_length"`
	EvalFraction              float64           `json:"eval_fraction"`
	EvalSteps                 int               `json:"eval_steps"`
	SaveSteps                 int               `json:"save_steps"`
	SaveTotalLimit            int               `json:"save_total_limit"`
	LoggingSteps              int               `json:"logging_steps"`
	Device                    string            `json:"device"`
	DType                     string            `json:"dtype"`
	BF16                      bool              `json:"bf16"` // autocast the forward pass to bfloat16 (weights stay in dtype)
	LoRA                      *model.LoRAConfig `json:"lora,omitempty"`
	MergeLoRA                 bool              `json:"merge_lora_on_export"`
}

// defaultDevice gives a trainer's unset device and dtype theirs: the CPU, in float32.
func defaultDevice(device, dtype *string) {
	if *device == "" {
		*device = "cpu"
	}
	if *dtype == "" {
		*dtype = "f32"
	}
}

// setDefault gives an unset (zero) config field its default.
func setDefault[T int | float64](p *T, v T) {
	if *p == 0 {
		*p = v
	}
}

// Defaults fills unset fields.
func (c *SFTConfig) Defaults() {
	setDefault(&c.LearningRate, 3e-4)
	setDefault(&c.MaxSteps, 200)
	setDefault(&c.PerDeviceTrainBatchSize, 8)
	setDefault(&c.GradientAccumulationSteps, 1)
	setDefault(&c.MaxGradNorm, 1.0)
	setDefault(&c.AdamBeta1, 0.9)
	setDefault(&c.AdamBeta2, 0.999)
	setDefault(&c.AdamEpsilon, 1e-8)
	setDefault(&c.MaxSeqLength, 256)
	setDefault(&c.EvalSteps, 50)
	setDefault(&c.SaveSteps, 50)
	setDefault(&c.SaveTotalLimit, 2)
	setDefault(&c.LoggingSteps, 1)
	if c.LRSchedulerType == "" {
		c.LRSchedulerType = "cosine"
	}
	defaultDevice(&c.Device, &c.DType)
}

func (c *SFTConfig) check() error {
	switch {
	case c.ModelNameOrPath == "":
		return fmt.Errorf("a model folder is required (--model)")
	case c.DatasetPath == "":
		return fmt.Errorf("a dataset is required (--data)")
	case c.LearningRate <= 0 || c.MaxSteps <= 0 || c.PerDeviceTrainBatchSize <= 0 || c.GradientAccumulationSteps <= 0 || c.MaxSeqLength < 2:
		return fmt.Errorf("learning rate, max steps, batch size, accumulation steps and sequence length must be positive")
	case c.EvalFraction < 0 || c.EvalFraction >= 1:
		return fmt.Errorf("eval fraction %v must be in [0, 1)", c.EvalFraction)
	case c.LRSchedulerType != "cosine" && c.LRSchedulerType != "linear" && c.LRSchedulerType != "constant":
		return fmt.Errorf("lr scheduler %q: use cosine, linear or constant", c.LRSchedulerType)
	}
	return nil
}

// Options are the run-time settings of a training process.
type Options struct {
	Resume    bool             // continue from the run folder's last checkpoint
	Events    chan<- Event     // optional: progress for an in-process watcher (never blocks the trainer)
	Log       io.Writer        // optional: human-readable progress lines
	OnMetrics func(*Metrics)   // optional: called with every logged step
	Now       func() time.Time // optional clock
}

// RunSFT trains in the run folder until max_steps, cancellation (ctx or `keel jobs cancel`) or an error. The
// final weights go to final/ as a Hugging Face folder that loads straight into `keel generate`.
func RunSFT(ctx context.Context, rt *torch.Runtime, run *Run, cfg SFTConfig, opts Options) (err error) {
	job, dev, dt, err := beginRun(run, "sft", &cfg, opts)
	if err != nil {
		return err
	}
	defer job.end(&err)
	logf := job.logf
	lm, err := model.Load(rt, cfg.ModelNameOrPath, model.Options{Device: dev, DType: dt})
	if err != nil {
		return err
	}
	defer lm.Close()
	examples, err := LoadDataset(cfg.DatasetPath, lm.Tokenizer)
	if err != nil {
		return err
	}
	// The eval split is a fixed, seeded choice of examples; training packs the rest.
	trainEx, evalEx := heldOut(examples, cfg.EvalFraction, 0, cfg.Seed, 0x5f7)
	blocks := Pack(trainEx, cfg.MaxSeqLength)
	evalBlocks := Pack(evalEx, cfg.MaxSeqLength)
	if len(blocks) == 0 {
		return fmt.Errorf("%s: no training tokens after the eval split", cfg.DatasetPath)
	}
	logf("model %s (%s %s), %d examples -> %d training blocks of %d tokens, %d eval blocks", cfg.ModelNameOrPath, dev, dt, len(examples), len(blocks), cfg.MaxSeqLength, len(evalBlocks))

	lm.Training = true
	t, err := startTraining(rt, lm, cfg.LoRA, nil, torch.AdamWConfig{LR: cfg.LearningRate, Beta1: cfg.AdamBeta1, Beta2: cfg.AdamBeta2, Eps: cfg.AdamEpsilon, WeightDecay: cfg.WeightDecay},
		&stepLoop{run: run, job: job, opts: opts, base: cfg.base(), seed: cfg.Seed, steps: cfg.MaxSteps, saveEvery: cfg.SaveSteps, keep: cfg.SaveTotalLimit})
	if err != nil {
		return err
	}
	defer t.close()
	loop := t.loop

	// The data order derives from (seed, position), so a resumed run trains on what the uninterrupted one would.
	perStep := cfg.PerDeviceTrainBatchSize * cfg.GradientAccumulationSteps
	warmup := int(math.Round(cfg.WarmupRatio * float64(cfg.MaxSteps)))
	err = loop.drive(ctx, func(ctx context.Context, step int) (stepResult, error) {
		lr := learningRate(cfg.LRSchedulerType, cfg.LearningRate, warmup, cfg.MaxSteps, step)
		var lossSum float64
		tokens := 0
		for micro := 0; micro < cfg.GradientAccumulationSteps; micro++ {
			batch := batchAt(blocks, cfg.Seed, (step-1)*perStep+micro*cfg.PerDeviceTrainBatchSize, cfg.PerDeviceTrainBatchSize)
			s := rt.NewScope()
			if cfg.BF16 {
				s.Autocast(dev, torch.BFloat16)
			}
			loss := batchLoss(s, lm.Model, batch)
			s.Backward(s.DivScalar(loss, float64(cfg.GradientAccumulationSteps)))
			v := s.Item(loss)
			err := s.Err()
			s.Close()
			if err != nil {
				return stepResult{}, fmt.Errorf("step %d: %w", step, err)
			}
			lossSum += v
			for _, b := range batch {
				tokens += len(b.IDs) - 1
			}
		}
		loss := lossSum / float64(cfg.GradientAccumulationSteps)
		gradNorm, err := t.opt.clipAndStep(t.params, cfg.MaxGradNorm, lr, loss, job.state.Checkpoint)
		if err != nil {
			return stepResult{}, fmt.Errorf("step %d: %w", step, err)
		}
		m := Metrics{Loss: loss, LR: lr, GradNorm: gradNorm}
		if len(evalBlocks) > 0 && (step%cfg.EvalSteps == 0 || step == cfg.MaxSteps || step == loop.start+1) {
			ev, err := evalLoss(rt, lm.Model, evalBlocks, cfg.PerDeviceTrainBatchSize)
			if err != nil {
				return stepResult{}, err
			}
			m.EvalLoss = &ev
		}
		logged := step%cfg.LoggingSteps == 0 || m.EvalLoss != nil || step == cfg.MaxSteps
		return stepResult{metrics: m, tokens: tokens, log: logged}, nil
	})
	if err != nil {
		return err
	}
	return loop.finish(lm, t.trainable)
}

// batchLoss is the mean cross-entropy of next-token prediction over the loss-marked targets.
func batchLoss(s *torch.Scope, m *model.Model, batch []Example) torch.Tensor {
	T := len(batch[0].IDs) - 1
	ids := make([][]int, len(batch))
	targets := make([]int64, 0, len(batch)*T)
	mask := make([]float32, 0, len(batch)*T)
	for b, ex := range batch {
		ids[b] = ex.IDs[:T]
		for t := 1; t <= T; t++ {
			targets = append(targets, int64(ex.IDs[t]))
			if ex.Loss[t] {
				mask = append(mask, 1)
			} else {
				mask = append(mask, 0)
			}
		}
	}
	dev := m.Opts.Device
	logits := m.TrainLogits(s, ids)
	lp := s.LogSoftmax(logits, -1)
	tgt := s.FromData(targets, torch.Int64, []int64{int64(len(batch)), int64(T), 1}, dev)
	w := s.FromData(mask, torch.Float32, []int64{int64(len(batch)), int64(T), 1}, dev)
	picked := s.Mul(s.Gather(lp, 2, tgt), w)
	return s.Div(s.Neg(s.Sum(picked, torch.AllDims, false)), s.ClampMin(s.Sum(w, torch.AllDims, false), 1))
}

func evalLoss(rt *torch.Runtime, m *model.Model, blocks []Example, batchSize int) (float64, error) {
	training := m.Training
	m.Training = false
	defer func() { m.Training = training }()
	var sum float64
	n := 0
	for i := 0; i < len(blocks); i += batchSize {
		batch := blocks[i:min(i+batchSize, len(blocks))]
		if len(batch[0].IDs) != len(batch[len(batch)-1].IDs) {
			batch = batch[:1]
		}
		s := rt.NewScope().NoGrad()
		v := s.Item(batchLoss(s, m, batch))
		err := s.Err()
		s.Close()
		if err != nil {
			return 0, err
		}
		sum += v * float64(len(batch))
		n += len(batch)
	}
	return sum / float64(n), nil
}

func (c SFTConfig) base() modelBase { return modelBase{c.ModelNameOrPath, c.LoRA} }

// requireGrad marks the tensors a trainer updates as requiring gradients and returns them as a list (what
// gradient clipping takes).
func requireGrad(rt *torch.Runtime, trainable []model.NamedTensor) ([]torch.Tensor, error) {
	ps := rt.NewScope()
	defer ps.Close()
	params := make([]torch.Tensor, len(trainable))
	for i, p := range trainable {
		ps.SetRequiresGrad(p.Tensor, true)
		params[i] = p.Tensor
	}
	return params, ps.Err()
}
