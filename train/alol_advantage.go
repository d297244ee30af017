package train

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/internal/atomicfile"
)

// AdvantageRecord is one line of the run's advantages.jsonl: A = R - V_ref(x), computed once.
type AdvantageRecord struct {
	Reward    float64 `json:"reward"`
	Value     float64 `json:"value"`
	Advantage float64 `json:"advantage"`
	RefLogp   float64 `json:"ref_logp"` // log pi_ref(y|x)
}

// advantages scores the training set (or takes its rewards), fits V_ref for the A-LoL family and caches
// R, V_ref(x), A and log pi_ref(y|x) per training example in advantages.jsonl (read back on resume).
func advantages(ctx context.Context, job *jobCtl, ref *model.LM, cfg ALoLConfig, reward Reward, trainEx, valEx []OfflineExample) ([]AdvantageRecord, error) {
	path := filepath.Join(job.run.Dir, "advantages.jsonl")
	if recs, err := ReadAdvantages(path); err == nil && len(recs) == len(trainEx) {
		job.logf("advantages: read %s", path)
		return recs, nil
	}
	recs := make([]AdvantageRecord, len(trainEx))
	cache, err := openScoreCache(cfg, reward)
	if err != nil {
		return nil, err
	}
	if reward != nil {
		var samples []Sample
		var todo []int
		for i, ex := range trainEx {
			if v, ok := cache.Reward[ex.Index]; ok {
				recs[i].Reward = v
			} else {
				samples, todo = append(samples, ex.Sample), append(todo, i)
			}
		}
		if len(samples) > 0 {
			job.logf("scoring %d training responses with %s", len(samples), reward.Name())
			scores, err := ScoreChecked(ctx, reward, samples)
			if err != nil {
				return nil, err
			}
			for j, i := range todo {
				recs[i].Reward = scores[j]
				cache.Reward[trainEx[i].Index] = scores[j]
			}
		}
	} else {
		for i, ex := range trainEx {
			if ex.Reward == nil {
				return nil, fmt.Errorf("%s: an example has no \"reward\": give every line one, or give --reward", cfg.DatasetPath)
			}
			recs[i].Reward = *ex.Reward
		}
	}
	if usesAdvantage(cfg.Algorithm) {
		if reward == nil {
			return nil, fmt.Errorf("%s needs V_ref, fitted on the reference's own replies to the validation prompts: give --reward to score them", cfg.Algorithm)
		}
		values, err := cachedValues(ctx, job, ref, cfg, reward, trainEx, valEx, cache)
		if err != nil {
			return nil, err
		}
		for i := range recs {
			recs[i].Value = values[i]
			recs[i].Advantage = recs[i].Reward - values[i]
		}
	} else {
		for i := range recs {
			recs[i].Advantage = recs[i].Reward
		}
	}
	var todo []int
	for i, ex := range trainEx {
		if v, ok := cache.RefLogp[ex.Index]; ok {
			recs[i].RefLogp = v
		} else {
			todo = append(todo, i)
		}
	}
	for start := 0; start < len(todo); start += 32 {
		idx := todo[start:min(start+32, len(todo))]
		batch := make([]OfflineExample, len(idx))
		for j, i := range idx {
			batch[j] = trainEx[i]
		}
		s := ref.RT.NewScope().NoGrad()
		logp, mask := responseLogprobs(s, ref.Model, batch)
		lp := s.Float32s(s.Sum(s.Mul(logp, mask), 1, false))
		err := s.Err()
		s.Close()
		if err != nil {
			return nil, fmt.Errorf("reference log-probabilities: %w", err)
		}
		for j, i := range idx {
			recs[i].RefLogp = float64(lp[j])
			cache.RefLogp[trainEx[i].Index] = float64(lp[j])
		}
	}
	if err := cache.save(); err != nil {
		return nil, err
	}
	if err := writeAdvantages(path, recs); err != nil {
		return nil, err
	}
	return recs, nil
}

// cachedValues is fitValue's V_ref, read from the score cache when a run with the same seed, split and head
// settings already fitted it.
func cachedValues(ctx context.Context, job *jobCtl, ref *model.LM, cfg ALoLConfig, reward Reward, trainEx, valEx []OfflineExample, cache *scoreCache) ([]float64, error) {
	key := valueKey(cfg)
	if old := cache.Values[key]; old != nil {
		values := make([]float64, len(trainEx))
		hit := true
		for i, ex := range trainEx {
			if values[i], hit = old[ex.Index]; !hit {
				break
			}
		}
		if hit {
			job.logf("value head: V_ref of %d training prompts read from %s", len(trainEx), cache.path)
			return values, nil
		}
	}
	values, err := fitValue(ctx, job, ref, cfg, reward, trainEx, valEx)
	if err != nil {
		return nil, err
	}
	byIndex := make(map[int]float64, len(trainEx))
	for i, ex := range trainEx {
		byIndex[ex.Index] = values[i]
	}
	cache.Values[key] = byIndex
	return values, nil
}

// fitValue trains the value head on the reference's greedy replies to the validation prompts and returns
// V_ref(x) for every training prompt.
func fitValue(ctx context.Context, job *jobCtl, ref *model.LM, cfg ALoLConfig, reward Reward, trainEx, valEx []OfflineExample) ([]float64, error) {
	chat := &model.Chatter{Ctx: ctx, LM: ref, BatchSize: 16, MaxTokens: cfg.MaxResponseLength, Seed: cfg.Seed}
	convs := make([][]tokenizer.Message, len(valEx))
	for i, ex := range valEx {
		convs[i] = ex.Messages
	}
	replies, err := chat.Replies(convs, 0)
	if err != nil {
		return nil, fmt.Errorf("value targets: %w", err)
	}
	samples := make([]Sample, len(valEx))
	for i, ex := range valEx {
		samples[i] = Sample{Messages: ex.Messages, Response: replies[i].Text, Answer: ex.Answer}
	}
	targets, err := ScoreChecked(ctx, reward, samples)
	if err != nil {
		return nil, err
	}
	states, err := promptStates(ref, valEx)
	if err != nil {
		return nil, err
	}
	head, err := NewValueHead(ref.RT, ref.Opts.Device, ref.Config.HiddenSize, cfg.Value, cfg.Seed)
	if err != nil {
		return nil, err
	}
	defer head.Close()
	mse, err := head.Fit(states, targets, cfg.Seed)
	if err != nil {
		return nil, err
	}
	job.logf("value head: %d validation replies, mean reward %.4f; MSE by epoch %s", len(valEx), Mean(targets), formatFloats(mse))
	values := make([]float64, 0, len(trainEx))
	for start := 0; start < len(trainEx); start += 64 {
		st, err := promptStates(ref, trainEx[start:min(start+64, len(trainEx))])
		if err != nil {
			return nil, err
		}
		v, err := head.Predict(st)
		if err != nil {
			return nil, err
		}
		values = append(values, v...)
	}
	return values, nil
}

// promptStates is the reference's last-layer states over each example's prompt.
func promptStates(lm *model.LM, exs []OfflineExample) ([][]float32, error) {
	seqs := make([][]int, len(exs))
	for i, ex := range exs {
		seqs[i] = ex.Prompt
	}
	return lm.FinalHidden(seqs)
}

// meanReward asks the validation prompts greedily and averages the reward of the replies.
func meanReward(ctx context.Context, chat *model.Chatter, reward Reward, exs []OfflineExample) (float64, error) {
	samples := make([]Sample, len(exs))
	for i, ex := range exs {
		samples[i] = Sample{Messages: ex.Messages, Answer: ex.Answer}
	}
	return GreedyReward(ctx, chat, reward, samples)
}

// GreedyReward answers the samples' prompts greedily and averages the reward of the replies (a sample's
// Response is filled in).
func GreedyReward(ctx context.Context, chat *model.Chatter, reward Reward, samples []Sample) (float64, error) {
	convs := make([][]tokenizer.Message, len(samples))
	for i, s := range samples {
		convs[i] = s.Messages
	}
	replies, err := chat.Replies(convs, 0)
	if err != nil {
		return 0, err
	}
	for i := range samples {
		samples[i].Response = replies[i].Text
	}
	scores, err := ScoreChecked(ctx, reward, samples)
	if err != nil {
		return 0, err
	}
	return Mean(scores), nil
}

// ReadAdvantages reads a run's advantages.jsonl (the rewards, values and advantages A-LoL cached).
func ReadAdvantages(path string) ([]AdvantageRecord, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []AdvantageRecord
	dec := json.NewDecoder(bytes.NewReader(raw))
	for dec.More() {
		var r AdvantageRecord
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func writeAdvantages(path string, recs []AdvantageRecord) error {
	return atomicfile.Write(path, func(f *os.File) error {
		enc := json.NewEncoder(f)
		for _, r := range recs {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	})
}

// scoreCache is ALoLConfig.ScoreCache's file: per dataset example, its reward and log pi_ref(y|x), under a key
// naming what they depend on; and V_ref per example for each value fit (seed, validation split and head
// settings), so runs that differ only in algorithm or learning rate fit the value head once.
type scoreCache struct {
	Key     string                     `json:"key"`
	Reward  map[int]float64            `json:"reward"`
	RefLogp map[int]float64            `json:"ref_logp"`
	Values  map[string]map[int]float64 `json:"values"`
	path    string
}

// valueKey names what a value fit depends on beyond the cache's key.
func valueKey(cfg ALoLConfig) string {
	k, _ := json.Marshal([]any{cfg.Seed, cfg.ValidationFraction, cfg.MaxValidation, cfg.Value})
	return string(k)
}

// openScoreCache reads the cache when it was made for the same data, reward, reference and lengths; otherwise
// (or with no cache configured) it starts empty.
func openScoreCache(cfg ALoLConfig, reward Reward) (*scoreCache, error) {
	c := &scoreCache{Reward: map[int]float64{}, RefLogp: map[int]float64{}, Values: map[string]map[int]float64{}, path: cfg.ScoreCache}
	if cfg.ScoreCache == "" {
		return c, nil
	}
	st, err := os.Stat(cfg.DatasetPath)
	if err != nil {
		return nil, err
	}
	name := "line rewards"
	if reward != nil {
		name = reward.Name()
	}
	key, _ := json.Marshal([]any{cfg.DatasetPath, st.Size(), st.ModTime().UnixNano(), name, cfg.ModelNameOrPath, cfg.MaxPromptLength, cfg.MaxResponseLength})
	c.Key = string(key)
	raw, err := os.ReadFile(cfg.ScoreCache)
	if err != nil {
		return c, nil
	}
	var old scoreCache
	if json.Unmarshal(raw, &old) == nil && old.Key == c.Key {
		for k, v := range old.Reward {
			c.Reward[k] = v
		}
		for k, v := range old.RefLogp {
			c.RefLogp[k] = v
		}
		for k, v := range old.Values {
			c.Values[k] = v
		}
	}
	return c, nil
}

func (c *scoreCache) save() error {
	if c.path == "" {
		return nil
	}
	raw, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return atomicfile.Write(c.path, func(f *os.File) error { _, err := f.Write(raw); return err })
}
