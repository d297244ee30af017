package train

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/steer"
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
	if c.Device == "" {
		c.Device = "cpu"
	}
	if c.DType == "" {
		c.DType = "f32"
	}
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
	Resume bool             // continue from the run folder's last checkpoint
	Events chan<- Event     // optional: progress for an in-process watcher (never blocks the trainer)
	Log    io.Writer        // optional: human-readable progress lines
	Hooks  func(*Metrics)   // optional: called with every logged step
	Now    func() time.Time // optional clock
}

// trainerState is checkpoints/step-N/trainer_state.json.
type trainerState struct {
	Step     int     `json:"step"`
	Loss     float64 `json:"loss"`
	Model    string  `json:"model"`
	LoRA     bool    `json:"lora"`
	Trainees int     `json:"trainable_tensors"`
}

// RunSFT trains in the run folder until max_steps, cancellation (ctx or `keel jobs cancel`) or an error. The
// final weights go to final/ as a Hugging Face folder that loads straight into `keel generate`.
func RunSFT(ctx context.Context, rt *torch.Runtime, run *Run, cfg SFTConfig, opts Options) (err error) {
	cfg.Defaults()
	if err := cfg.check(); err != nil {
		return err
	}
	job, err := startJob(run, "sft", cfg.MaxSteps, cfg, opts)
	if err != nil {
		return err
	}
	defer job.end(&err)
	logf, emit := job.logf, job.emit
	state := &job.state

	dev, dt, err := deviceDType(cfg.Device, cfg.DType)
	if err != nil {
		return err
	}
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
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5f7))
	order := rng.Perm(len(examples))
	nEval := int(math.Round(cfg.EvalFraction * float64(len(examples))))
	if cfg.EvalFraction > 0 && nEval == 0 && len(examples) > 1 {
		nEval = 1
	}
	var trainEx, evalEx []Example
	for i, k := range order {
		if i < nEval {
			evalEx = append(evalEx, examples[k])
		} else {
			trainEx = append(trainEx, examples[k])
		}
	}
	blocks := Pack(trainEx, cfg.MaxSeqLength)
	evalBlocks := Pack(evalEx, cfg.MaxSeqLength)
	if len(blocks) == 0 {
		return fmt.Errorf("%s: no training tokens after the eval split", cfg.DatasetPath)
	}
	logf("model %s (%s %s), %d examples -> %d training blocks of %d tokens, %d eval blocks", cfg.ModelNameOrPath, dev, dt, len(examples), len(blocks), cfg.MaxSeqLength, len(evalBlocks))

	var trainable []model.NamedTensor
	if cfg.LoRA != nil {
		if trainable, err = lm.AttachLoRA(*cfg.LoRA, cfg.Seed); err != nil {
			return err
		}
	} else {
		trainable = lm.Names
	}
	lm.Training = true
	params, err := requireGrad(rt, trainable)
	if err != nil {
		return err
	}
	opt, err := NewAdamW(rt, trainable, torch.AdamWConfig{LR: cfg.LearningRate, Beta1: cfg.AdamBeta1, Beta2: cfg.AdamBeta2, Eps: cfg.AdamEpsilon, WeightDecay: cfg.WeightDecay})
	if err != nil {
		return err
	}
	defer opt.Close()

	start := 0
	if opts.Resume {
		if start, _, err = resumeRun(rt, run, trainable, opt, cfg.base(), logf); err != nil {
			return err
		}
	}
	mlog, err := openMetricsLog(run.Dir)
	if err != nil {
		return err
	}
	defer mlog.close()

	perStep := cfg.PerDeviceTrainBatchSize * cfg.GradientAccumulationSteps
	warmup := int(math.Round(cfg.WarmupRatio * float64(cfg.MaxSteps)))
	batchAt := func(pos int) []Example {
		out := make([]Example, cfg.PerDeviceTrainBatchSize)
		for j := range out {
			p := pos + j
			epoch, i := p/len(blocks), p%len(blocks)
			perm := rand.New(rand.NewPCG(cfg.Seed, uint64(epoch)+1)).Perm(len(blocks))
			out[j] = blocks[perm[i]]
		}
		return out
	}
	lastCk := ""
	t0 := time.Now()
	tokens := 0
	for step := start + 1; step <= cfg.MaxSteps; step++ {
		t0 = t0.Add(job.holdWhilePaused(ctx))
		if ctx.Err() != nil || run.cancelRequested() {
			if ck, err := saveCheckpoint(rt, run, step-1, trainable, opt, cfg.base(), state.Loss); err == nil && step-1 > start {
				state.Checkpoint = ck
			}
			return errCancelled
		}
		if err := rt.ManualSeed(cfg.Seed*1000003 + uint64(step)); err != nil {
			return err
		}
		lr := learningRate(cfg.LRSchedulerType, cfg.LearningRate, warmup, cfg.MaxSteps, step)
		var lossSum float64
		for micro := 0; micro < cfg.GradientAccumulationSteps; micro++ {
			batch := batchAt((step-1)*perStep + micro*cfg.PerDeviceTrainBatchSize)
			s := rt.NewScope()
			if cfg.BF16 {
				s.Autocast(dev, torch.BFloat16)
			}
			loss := batchLoss(s, lm.Model, batch)
			scaled := s.DivScalar(loss, float64(cfg.GradientAccumulationSteps))
			s.Backward(scaled)
			v := s.Item(loss)
			err := s.Err()
			s.Close()
			if err != nil {
				return fmt.Errorf("step %d: %w", step, err)
			}
			lossSum += v
			for _, b := range batch {
				tokens += len(b.IDs) - 1
			}
		}
		loss := lossSum / float64(cfg.GradientAccumulationSteps)
		gradNorm, err := opt.clipAndStep(params, cfg.MaxGradNorm, lr, loss, lastCk)
		if err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		elapsed := time.Since(t0).Seconds()
		m := Metrics{Step: step, Loss: loss, LR: lr, GradNorm: gradNorm, TokensPerSec: float64(tokens) / elapsed, Time: time.Now().UTC()}
		if done := step - start; done > 0 {
			m.ETASeconds = elapsed / float64(done) * float64(cfg.MaxSteps-step)
		}
		if len(evalBlocks) > 0 && (step%cfg.EvalSteps == 0 || step == cfg.MaxSteps || step == start+1) {
			ev, err := evalLoss(rt, lm.Model, evalBlocks, cfg.PerDeviceTrainBatchSize)
			if err != nil {
				return err
			}
			m.EvalLoss = &ev
		}
		if step%cfg.LoggingSteps == 0 || m.EvalLoss != nil || step == cfg.MaxSteps {
			if err := mlog.write(m); err != nil {
				return fmt.Errorf("writing metrics: %w", err)
			}
			if opts.Hooks != nil {
				opts.Hooks(&m)
			}
			emit(Event{Metrics: &m})
		}
		state.Step, state.Loss = step, loss
		if step%cfg.SaveSteps == 0 && step < cfg.MaxSteps {
			mlog.sync()
			ck, err := saveCheckpoint(rt, run, step, trainable, opt, cfg.base(), loss)
			if err != nil {
				return fmt.Errorf("checkpoint at step %d: %w (the previous checkpoint is intact)", step, err)
			}
			lastCk, state.Checkpoint = ck, ck
			pruneCheckpoints(run.Dir, cfg.SaveTotalLimit)
		}
		job.progress(step, loss)
	}
	mlog.sync()
	lm.Training = false
	final, err := exportFinal(rt, run, lm, trainable, cfg.base())
	if err != nil {
		return fmt.Errorf("exporting the final weights: %w", err)
	}
	plotLoss(run)
	state.Final = final
	job.finish(Done, nil)
	logf("done: %s", final)
	return nil
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

// saveCheckpoint writes checkpoints/step-N atomically: a temporary folder, fsynced files, then a rename.
// modelBase is what checkpoints and exports need to know of any trainer's config.
type modelBase struct {
	Dir  string            // the starting model's folder (tokenizer files are copied from it)
	LoRA *model.LoRAConfig // nil: full fine-tune
}

func (c SFTConfig) base() modelBase { return modelBase{c.ModelNameOrPath, c.LoRA} }

func saveCheckpoint(rt *torch.Runtime, run *Run, step int, trainable []model.NamedTensor, opt *AdamW, cfg modelBase, loss float64) (string, error) {
	final := filepath.Join(run.Dir, "checkpoints", fmt.Sprintf("step-%06d", step))
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	tmp := filepath.Join(run.Dir, "checkpoints", fmt.Sprintf(".tmp-step-%06d", step))
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	s := rt.NewScope().NoGrad()
	defer s.Close()
	var ts []safetensors.Tensor
	for _, p := range trainable {
		t, err := tensorBytes(s, p.Tensor)
		if err != nil {
			os.RemoveAll(tmp)
			return "", err
		}
		t.Name = p.Name
		ts = append(ts, t)
	}
	if err := safetensors.Write(filepath.Join(tmp, "weights.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := opt.Save(filepath.Join(tmp, "optimizer.safetensors")); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := atomicfile.WriteJSON(filepath.Join(tmp, "trainer_state.json"), trainerState{Step: step, Loss: loss, Model: cfg.Dir, LoRA: cfg.LoRA != nil, Trainees: len(trainable)}); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if d, err := os.Open(filepath.Dir(final)); err == nil {
		d.Sync()
		d.Close()
	}
	return final, nil
}

// deviceDType parses a trainer's --device and --dtype.
func deviceDType(device, dtype string) (torch.Device, torch.DType, error) {
	dev, err := torch.ParseDevice(device)
	if err != nil {
		return dev, 0, err
	}
	dt, err := torch.ParseDType(dtype)
	return dev, dt, err
}

// resumeRun loads the run's latest checkpoint into the weights and optimizer and cuts the metrics log back to
// its step (before the log is opened: truncation replaces the file). It returns the step and the checkpoint
// folder, 0 and "" when the run has none.
func resumeRun(rt *torch.Runtime, run *Run, trainable []model.NamedTensor, opt *AdamW, base modelBase, logf func(string, ...any)) (int, string, error) {
	ck, err := latestCheckpoint(run.Dir)
	if err != nil || ck == "" {
		if err == nil {
			logf("no checkpoint in %s: starting from step 0", run.Dir)
		}
		return 0, "", err
	}
	start, err := loadCheckpoint(rt, ck, trainable, opt, base)
	if err != nil {
		return 0, "", err
	}
	logf("resumed from %s at step %d", ck, start)
	truncateMetrics(run.Dir, start)
	return start, ck, nil
}

// checkpointNames lists a run's checkpoints/step-N folders, oldest first.
func checkpointNames(runDir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(runDir, "checkpoints"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "step-") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

func latestCheckpoint(runDir string) (string, error) {
	names, err := checkpointNames(runDir)
	if err != nil || len(names) == 0 {
		return "", err
	}
	return filepath.Join(runDir, "checkpoints", names[len(names)-1]), nil
}

// Checkpoints lists the steps a run kept checkpoints of, oldest first.
func Checkpoints(runDir string) ([]int, error) {
	names, err := checkpointNames(runDir)
	var steps []int
	for _, n := range names {
		var step int
		if _, err := fmt.Sscanf(n, "step-%d", &step); err == nil {
			steps = append(steps, step)
		}
	}
	return steps, err
}

// CheckpointDir is a run's checkpoint at step; a step it did not keep is an error listing those it did.
func CheckpointDir(runDir string, step int) (string, error) {
	dir := filepath.Join(runDir, "checkpoints", fmt.Sprintf("step-%06d", step))
	if _, err := os.Stat(filepath.Join(dir, "trainer_state.json")); err == nil {
		return dir, nil
	}
	steps, _ := Checkpoints(runDir)
	return "", fmt.Errorf("run %s kept no checkpoint at step %d (it has %v)", filepath.Base(runDir), step, steps)
}

func pruneCheckpoints(runDir string, keep int) {
	if keep <= 0 {
		return
	}
	names, _ := checkpointNames(runDir)
	for len(names) > keep {
		os.RemoveAll(filepath.Join(runDir, "checkpoints", names[0]))
		names = names[1:]
	}
}

func loadCheckpoint(rt *torch.Runtime, dir string, trainable []model.NamedTensor, opt *AdamW, cfg modelBase) (int, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "trainer_state.json"))
	if err != nil {
		return 0, err
	}
	var ts trainerState
	if err := json.Unmarshal(raw, &ts); err != nil {
		return 0, fmt.Errorf("%s/trainer_state.json: %v", dir, err)
	}
	if ts.LoRA != (cfg.LoRA != nil) || ts.Trainees != len(trainable) {
		return 0, fmt.Errorf("%s was written by a different setup (LoRA %v, %d tensors; now LoRA %v, %d): resume with the run's own config", dir, ts.LoRA, ts.Trainees, cfg.LoRA != nil, len(trainable))
	}
	f, err := safetensors.Open(filepath.Join(dir, "weights.safetensors"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := rt.NewScope().NoGrad()
	defer s.Close()
	for _, p := range trainable {
		if err := loadInto(s, f, p.Name, p.Tensor); err != nil {
			return 0, fmt.Errorf("%s: %w", dir, err)
		}
	}
	if err := opt.Load(filepath.Join(dir, "optimizer.safetensors")); err != nil {
		return 0, err
	}
	if opt.Step != ts.Step {
		return 0, fmt.Errorf("%s: optimizer at step %d, trainer at %d", dir, opt.Step, ts.Step)
	}
	return ts.Step, nil
}

// truncateMetrics drops logged steps after a resumed checkpoint, so metrics.jsonl reads as one run.
func truncateMetrics(runDir string, step int) {
	run := &Run{Dir: runDir}
	ms, err := run.ReadMetrics()
	if err != nil {
		return
	}
	var keep []byte
	for _, m := range ms {
		if m.Step <= step {
			raw, _ := json.Marshal(m)
			keep = append(append(keep, raw...), '\n')
		}
	}
	atomicfile.Write(filepath.Join(runDir, "metrics.jsonl"), func(f *os.File) error { _, err := f.Write(keep); return err })
	os.Remove(filepath.Join(runDir, "metrics.csv"))
}

// exportFinal writes final/ as a Hugging Face folder (LoRA merged in; the adapter alone also kept in
// final/adapter/ when LoRA was used).
func exportFinal(rt *torch.Runtime, run *Run, lm *model.LM, trainable []model.NamedTensor, cfg modelBase) (string, error) {
	dir := filepath.Join(run.Dir, "final")
	if cfg.LoRA != nil {
		s := rt.NewScope().NoGrad()
		var ts []safetensors.Tensor
		for _, p := range trainable {
			t, err := tensorBytes(s, p.Tensor)
			if err != nil {
				s.Close()
				return "", err
			}
			t.Name = p.Name
			ts = append(ts, t)
		}
		s.Close()
		if err := os.MkdirAll(filepath.Join(dir, "adapter"), 0o755); err != nil {
			return "", err
		}
		if err := safetensors.Write(filepath.Join(dir, "adapter", "adapter_model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
			return "", err
		}
		ac := map[string]any{"peft_type": "LORA", "r": cfg.LoRA.R, "lora_alpha": cfg.LoRA.Alpha, "lora_dropout": cfg.LoRA.Dropout, "target_modules": cfg.LoRA.TargetModules, "base_model_name_or_path": cfg.Dir}
		if err := atomicfile.WriteJSON(filepath.Join(dir, "adapter", "adapter_config.json"), ac); err != nil {
			return "", err
		}
		if err := lm.MergeLoRA(); err != nil {
			return "", err
		}
	}
	if err := lm.Save(dir, torch.Float32); err != nil {
		return "", err
	}
	return dir, finishModelFolder(dir, cfg.Dir)
}

// finishModelFolder completes an exported model folder: the base model's tokenizer and generation files, and the
// lineage that lets vector files made on the base apply to the fine-tune.
func finishModelFolder(dir, baseDir string) error {
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json", "generation_config.json", "tokenizer.llama2c.bin", "special_tokens_map.json"} {
		raw, err := os.ReadFile(filepath.Join(baseDir, name))
		if err != nil {
			continue
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, name), raw); err != nil {
			return err
		}
	}
	return steer.WriteLineage(dir, baseDir)
}

// CheckpointModel turns a run's checkpoint (checkpoints/step-N: the trained tensors only) into a model folder
// that loads like any other, written once into the checkpoint as model/: the base model with the checkpoint's
// tensors (LoRA merged in). Tensors the model does not have (PPO's value head) are left out.
func CheckpointModel(rt *torch.Runtime, ckpt string) (string, error) {
	out := filepath.Join(ckpt, "model")
	if _, err := os.Stat(filepath.Join(out, steer.LineageFile)); err == nil {
		return out, nil
	}
	raw, err := os.ReadFile(filepath.Join(ckpt, "trainer_state.json"))
	if err != nil {
		return "", fmt.Errorf("%s is not a checkpoint (no trainer_state.json): `keel jobs show ID` lists a run's checkpoints", ckpt)
	}
	var ts trainerState
	if err := json.Unmarshal(raw, &ts); err != nil {
		return "", fmt.Errorf("%s/trainer_state.json: %v", ckpt, err)
	}
	var runCfg struct {
		LoRA *model.LoRAConfig `json:"lora"`
	}
	if ts.LoRA {
		runDir := filepath.Dir(filepath.Dir(ckpt))
		raw, err := os.ReadFile(filepath.Join(runDir, "config.json"))
		if err == nil {
			err = json.Unmarshal(raw, &runCfg)
		}
		if err != nil || runCfg.LoRA == nil {
			return "", fmt.Errorf("%s: a LoRA checkpoint whose run has no readable LoRA settings in %s/config.json", ckpt, runDir)
		}
	}
	lm, err := model.Load(rt, ts.Model, model.Options{})
	if err != nil {
		return "", fmt.Errorf("%s: its base model: %w", ckpt, err)
	}
	defer lm.Close()
	trainable := lm.Names
	if runCfg.LoRA != nil {
		if trainable, err = lm.AttachLoRA(*runCfg.LoRA, 0); err != nil {
			return "", err
		}
	}
	f, err := safetensors.Open(filepath.Join(ckpt, "weights.safetensors"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := rt.NewScope().NoGrad()
	defer s.Close()
	for _, p := range trainable {
		if err := loadInto(s, f, p.Name, p.Tensor); err != nil {
			return "", fmt.Errorf("%s: %w", ckpt, err)
		}
	}
	if runCfg.LoRA != nil {
		if err := lm.MergeLoRA(); err != nil {
			return "", err
		}
	}
	tmp := filepath.Join(ckpt, ".tmp-model")
	os.RemoveAll(tmp)
	if err := lm.Save(tmp, torch.Float32); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := finishModelFolder(tmp, ts.Model); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	os.RemoveAll(out)
	if err := os.Rename(tmp, out); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	return out, nil
}

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
