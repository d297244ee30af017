package workbench

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/train"
)

// Confinement is what a remote user's background jobs may do. The argv of `keel train` is built from checked
// flags only: a data file is read from the user's own space (a regular file under the read bound) and copied
// into the run, so the trainer never opens a path the user named; no flag names a model, a run folder or an
// output; a reward that runs a program is refused unless the operator named that program. Jobs run with bounded
// threads and address space, and at most so many at once per user and per machine.
type Confinement struct {
	Space   *UserSpace
	MaxRead int64
	// Programs are the reward programs the operator allows (keel serve --allow-reward-program), each matched
	// whole against what follows "cmd:".
	Programs []string
	// Threads are each job's libtorch threads; MaxMemory its address space in bytes (0: no bound).
	Threads   int
	MaxMemory int64
	// MaxRunning bounds this user's unfinished jobs; MaxMachine every remote user's together, counted by
	// Running (which lists the unfinished jobs of every user).
	MaxRunning, MaxMachine int
	Running                func() (int, error)
}

// trainFlag is one flag a remote /train may pass, with the check of its value.
type trainFlag struct {
	kinds string // the trainers that take it: "sft alol ppo"
	check func(v string) error
	file  bool // names a data file in the user's space
	bool  bool // takes no value
}

func number(v string) error {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("%q is not a finite number", v)
	}
	return nil
}

func oneOf(choices ...string) func(string) error {
	return func(v string) error {
		if !slices.Contains(choices, v) {
			return fmt.Errorf("%q is not one of %s", v, strings.Join(choices, ", "))
		}
		return nil
	}
}

var (
	loraTargets = regexp.MustCompile(`^[a-z_]+(,[a-z_]+)*$`)
	runID       = regexp.MustCompile(`^[a-z]+-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$`)
)

// remoteTrainFlags are the flags a remote /train may give; every other is refused by name.
var remoteTrainFlags = func() map[string]trainFlag {
	m := map[string]trainFlag{
		"data":      {kinds: "sft alol", file: true},
		"prompts":   {kinds: "ppo", file: true},
		"ptx-data":  {kinds: "ppo", file: true},
		"schedule":  {kinds: "sft alol", check: oneOf("cosine", "linear", "constant")},
		"dtype":     {kinds: "sft alol ppo", check: oneOf("f32", "f16", "bf16")},
		"algorithm": {kinds: "alol", check: oneOf(train.ALoLAlgorithms...)},
		"lora-targets": {kinds: "sft", check: func(v string) error {
			if !loraTargets.MatchString(v) {
				return fmt.Errorf("%q is not a comma-separated list of module names", v)
			}
			return nil
		}},
		"reward":           {kinds: "alol ppo"},
		"bf16":             {kinds: "sft", bool: true},
		"whiten-rewards":   {kinds: "ppo", bool: true},
		"reward-normalize": {kinds: "ppo", bool: true},
	}
	for _, n := range strings.Fields("lr steps seed clip weight-decay keep save-every stop-after") {
		m[n] = trainFlag{kinds: "sft alol ppo", check: number}
	}
	for _, n := range strings.Fields("batch accum warmup seq-len eval-fraction eval-every lora lora-alpha lora-dropout") {
		m[n] = trainFlag{kinds: "sft", check: number}
	}
	// Numeric flags of one trainer, some shared with another (a flag's kinds are all that take it).
	for kind, names := range map[string]string{
		"alol": "batch eval-every ppo-clip kl-beta max-seconds warmup-steps max-prompt max-response validation max-validation value-lr value-epochs max-value",
		"ppo":  "rollouts mini-batch ppo-epochs kl-coef cliprange cliprange-value vf-coef gamma lam reward-clip ent-coef ptx-coef temperature top-p repetition-penalty max-new-tokens max-prompt critic-warmup kl-target kl-stop-steps",
	} {
		for _, n := range strings.Fields(names) {
			k := m[n]
			if k.kinds == "" {
				k = trainFlag{check: number}
			}
			k.kinds += " " + kind
			m[n] = k
		}
	}
	return m
}()

func checkRunID(id string) error {
	if !runID.MatchString(id) {
		return fmt.Errorf("%q is not a job id (they read like sft-20261207-101500-a1b2c3): /jobs lists yours", id)
	}
	return nil
}

// checkReward refuses a reward spec that would run a program the operator did not allow, or read a folder.
func (c *Confinement) checkReward(spec string) error {
	for _, term := range strings.Split(spec, "+") {
		term = strings.TrimSpace(term)
		if _, t, ok := strings.Cut(term, "*"); ok && !strings.HasPrefix(term, "cmd:") {
			term = strings.TrimSpace(t)
		}
		name, arg, _ := strings.Cut(term, ":")
		switch name {
		case "cmd":
			if !slices.Contains(c.Programs, arg) {
				return fmt.Errorf("--reward %s: rewards that run a program are off over SSH unless the operator allows that program (keel serve --allow-reward-program)", term)
			}
		case "rm":
			return fmt.Errorf("--reward %s: a reward model by folder is not offered over SSH: use axis, exact or style:ROLE", term)
		}
	}
	return nil
}

// confinedArgs checks a remote /train's flags and returns the trainer's flags with every data file replaced by
// the copy written into run.
func (c *Confinement) confinedArgs(kind string, args []string, run *train.Run) ([]string, error) {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return nil, fmt.Errorf("/train %s: %q is not a flag: give --name value pairs (/help)", kind, a)
		}
		name, val, eq := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f, ok := remoteTrainFlags[name]
		if !ok || !slices.Contains(strings.Fields(f.kinds), kind) {
			return nil, fmt.Errorf("/train %s: --%s is not offered over SSH (runs, models and outputs are the server's to place)", kind, name)
		}
		if f.bool {
			if eq && val != "true" && val != "false" {
				return nil, fmt.Errorf("/train %s: --%s takes no value, or =true/=false", kind, name)
			}
			out = append(out, a)
			continue
		}
		if !eq {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("/train %s: --%s needs a value", kind, name)
			}
			i++
			val = args[i]
		}
		switch {
		case f.file:
			raw, err := c.Space.ReadFile(val, c.MaxRead)
			if err != nil {
				return nil, fmt.Errorf("/train %s: --%s: %w", kind, name, err)
			}
			copyPath := filepath.Join(run.Dir, "input", name+filepath.Ext(val))
			if err := os.MkdirAll(filepath.Dir(copyPath), 0o700); err != nil {
				return nil, err
			}
			if err := atomicfile.WriteFile(copyPath, raw); err != nil {
				return nil, err
			}
			val = copyPath
		case name == "reward":
			if err := c.checkReward(val); err != nil {
				return nil, err
			}
		case f.check != nil:
			if err := f.check(val); err != nil {
				return nil, fmt.Errorf("/train %s: --%s: %w", kind, name, err)
			}
		}
		out = append(out, "--"+name, val)
	}
	return out, nil
}

// startConfined starts a remote user's job: quotas first, then the run folder, the checked flags and the process.
func (p *ProcessJobs) startConfined(kind string, args []string) (string, error) {
	c := p.Confine
	mine, err := unfinished(p.RunsDir)
	if err != nil {
		return "", err
	}
	if c.MaxRunning > 0 && mine >= c.MaxRunning {
		return "", fmt.Errorf("/train: %d of your jobs are running (the bound per user is %d): wait for one or /cancel it", mine, c.MaxRunning)
	}
	if c.Running != nil && c.MaxMachine > 0 {
		all, err := c.Running()
		if err != nil {
			return "", err
		}
		if all >= c.MaxMachine {
			return "", fmt.Errorf("/train: %d jobs are running on this server (its bound is %d): try again when one ends", all, c.MaxMachine)
		}
	}
	run, err := train.NewRun(p.RunsDir, kind)
	if err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		os.RemoveAll(run.Dir)
		return "", err
	}
	if err := run.SetOwner(p.Owner); err != nil {
		return fail(err)
	}
	flags, err := c.confinedArgs(kind, args, run)
	if err != nil {
		return fail(err)
	}
	full := []string{"train", kind, "--model", p.Model, "--runs", p.RunsDir, "--run-dir", run.Dir, "--detach",
		"--threads", strconv.Itoa(max(1, c.Threads)), "--max-memory", strconv.FormatInt(c.MaxMemory, 10)}
	if out, err := exec.Command(p.Exe, append(full, flags...)...).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("keel train %s: %s", kind, strings.TrimSpace(string(out))))
	}
	p.watch(run, kind)
	return run.ID, nil
}

// unfinished counts the runs under a folder that are queued, running or paused.
func unfinished(runsDir string) (int, error) {
	states, err := train.ListRuns(runsDir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range states {
		if s.State == train.Queued || s.State == train.Running || s.State == train.Paused {
			n++
		}
	}
	return n, nil
}

// UnfinishedUnder counts the unfinished runs in every run folder under a folder of users' runs folders.
func UnfinishedUnder(usersRuns string) (int, error) {
	dirs, err := filepath.Glob(filepath.Join(usersRuns, "*"))
	if err != nil {
		return 0, err
	}
	total := 0
	for _, d := range dirs {
		n, err := unfinished(d)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}
