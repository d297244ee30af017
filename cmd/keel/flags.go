package main

import (
	"flag"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/evals"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

// loraFlags are the LoRA settings shared by the trainers.
type loraFlags struct {
	rank           *int
	alpha, dropout *float64
	targets        *string
}

func (l *loraFlags) register(fs *flag.FlagSet) {
	l.rank = fs.Int("lora", 0, "LoRA rank (0 = full fine-tune)")
	l.alpha = fs.Float64("lora-alpha", 0, "LoRA alpha (default: the rank)")
	l.dropout = fs.Float64("lora-dropout", 0, "LoRA dropout")
	l.targets = fs.String("lora-targets", "q,k,v,o,gate,up,down", "LoRA target modules")
}

func (l *loraFlags) config() *model.LoRAConfig {
	if *l.rank <= 0 {
		return nil
	}
	return &model.LoRAConfig{R: *l.rank, Alpha: *l.alpha, Dropout: *l.dropout, TargetModules: strings.Split(*l.targets, ",")}
}

// extractFlags are the extraction protocol's flags, shared by axis extract and eval capping.
func extractFlags(fs interface {
	IntVar(*int, string, int, string)
	StringVar(*string, string, string, string)
	Uint64Var(*uint64, string, uint64, string)
}, cfg *probes.ExtractConfig, roles *string, limit *int) {
	fs.StringVar(roles, "roles", "", "comma-separated roles (default: all)")
	fs.IntVar(limit, "limit", 0, "only N roles, spread over the spectrum (a quick run)")
	fs.IntVar(&cfg.Questions, "questions", cfg.Questions, "questions under each of the 5 system prompts per role")
	fs.StringVar(&cfg.Judge, "judge", cfg.Judge, "style (keel's style scorer), self (the model with the paper's 0-3 rubric), none, or a server's URL#MODEL")
	fs.IntVar(&cfg.MinCount, "min-count", cfg.MinCount, "score-3 rollouts a role needs for a vector")
	fs.IntVar(&cfg.MaxTokens, "max-tokens", cfg.MaxTokens, "tokens per rollout")
	fs.IntVar(&cfg.BatchSize, "batch", cfg.BatchSize, "rollouts generated together")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed")
	fs.StringVar(&cfg.Rollouts, "rollouts", "", "generate the rollouts on an OpenAI-compatible server, URL#MODEL (its key from $KEEL_PROVIDER_KEY or $KEEL_PROVIDER_KEY_FILE); activations stay keel's")
}

// limitRoles keeps n roles spread evenly over the list (which runs from assistant-like to theatrical), so a
// quick run still spans the spectrum; n <= 0 keeps them all.
func limitRoles(p *probes.Personas, roles []string, n int) []string {
	if len(roles) == 0 {
		roles = p.Names()
	}
	if n <= 0 || n >= len(roles) {
		return roles
	}
	out := make([]string, n)
	for i := range out {
		out[i] = roles[i*len(roles)/n]
	}
	return out
}

// trainerFlags declares the placement and checkpoint flags every trainer takes, on its config's fields.
func trainerFlags(fs *flag.FlagSet, device, dtype *string, saveEvery, keep *int, saveHelp string) {
	fs.IntVar(saveEvery, "save-every", *saveEvery, saveHelp)
	fs.IntVar(keep, "keep", *keep, "checkpoints kept")
	fs.StringVar(device, "device", *device, "cpu, cuda or cuda:N")
	fs.StringVar(dtype, "dtype", *dtype, "f32, f16 or bf16")
}

// rewardFlags are the flags of a trainer's --reward that names the axis.
type rewardFlags struct {
	axisDir    string
	ignoreHash bool
}

func (r *rewardFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.axisDir, "axis", "", "axis folder for the axis reward (axis.safetensors, default_vector.safetensors); default: the model's axis/")
	fs.BoolVar(&r.ignoreHash, "ignore-hash", false, "use an axis made for other weights of the same shape")
}

// resolve reads a trainer's --reward spec on its device (evals.ResolveReward); release frees what it loaded.
func (r *rewardFlags) resolve(rt *torch.Runtime, spec, modelDir, device string) (train.Reward, func(), error) {
	dev, err := torch.ParseDevice(device)
	if err != nil {
		return nil, nil, cli.UsageError{Err: err}
	}
	return evals.ResolveReward(spec, evals.RewardSource{ModelDir: modelDir, AxisDir: cli.AxisPath(r.axisDir), IgnoreHash: r.ignoreHash, RT: rt, Device: dev})
}
