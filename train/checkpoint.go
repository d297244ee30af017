package train

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/steer"
)

// Checkpoints, resuming and the final export: what every trainer's run folder holds besides its metrics.

// trainerState is checkpoints/step-N/trainer_state.json.
type trainerState struct {
	Step     int     `json:"step"`
	Loss     float64 `json:"loss"`
	Model    string  `json:"model"`
	LoRA     bool    `json:"lora"`
	Trainees int     `json:"trainable_tensors"`
}

// modelBase is what checkpoints and exports need to know of any trainer's config.
type modelBase struct {
	Dir  string            // the starting model's folder (tokenizer files are copied from it)
	LoRA *model.LoRAConfig // nil: full fine-tune
}

// saveCheckpoint writes checkpoints/step-N atomically: a temporary folder, fsynced files, then a rename.
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
	if err := saveWeights(rt, tmp, trainable); err != nil {
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
