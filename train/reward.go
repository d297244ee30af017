package train

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/steer"
)

// Sample is one prompt and response to score.
type Sample struct {
	Messages []tokenizer.Message `json:"messages"` // the prompt: system and user turns before the response
	Response string              `json:"response"`
	Answer   string              `json:"answer,omitempty"` // the exact answer of a checkable task, for the exact reward
}

// Reward scores samples; every score is finite and the count matches, or it is an error.
type Reward interface {
	Name() string
	Score(ctx context.Context, samples []Sample) ([]float64, error)
}

// checked runs a reward and refuses a wrong count or a score that is not a finite number.
func checked(ctx context.Context, r Reward, samples []Sample) ([]float64, error) {
	scores, err := r.Score(ctx, samples)
	if err != nil {
		return nil, fmt.Errorf("reward %s: %w", r.Name(), err)
	}
	if len(scores) != len(samples) {
		return nil, fmt.Errorf("reward %s: %d scores for %d samples", r.Name(), len(scores), len(samples))
	}
	for i, s := range scores {
		if math.IsNaN(s) || math.IsInf(s, 0) {
			return nil, fmt.Errorf("reward %s: sample %d scored %v", r.Name(), i, s)
		}
	}
	return scores, nil
}

// AxisReward is "stay the Assistant": the mean projection of the response's tokens on the axis at the analysis
// layer, squashed to [0, 1] by a logistic centred on the drift line (midway between the roles' and the default
// Assistant's means), the Assistant's mean landing near 0.88 and the roles' near 0.12.
type AxisReward struct {
	LM        *model.LM
	Axis      *steer.VectorFile
	Layer     int
	Mid, Half float64 // the drift line and half the roles-to-Assistant gap
	BatchSize int
}

// NewAxisReward reads the scale from an extraction folder's default vector: the Assistant sits at <default, u>
// and the roles' mean |axis| below it.
func NewAxisReward(lm *model.LM, axis, defaultVector *steer.VectorFile, layer int) (*AxisReward, error) {
	line, top, ok := axis.Scale(defaultVector, layer)
	if !ok {
		return nil, fmt.Errorf("the axis or default vector has no layer %d", layer)
	}
	return &AxisReward{LM: lm, Axis: axis, Layer: layer, Mid: line, Half: top - line, BatchSize: 32}, nil
}

// Name implements Reward.
func (r *AxisReward) Name() string { return "axis" }

// Score implements Reward.
func (r *AxisReward) Score(ctx context.Context, samples []Sample) ([]float64, error) {
	out := make([]float64, len(samples))
	u := r.Axis.Layers[r.Layer]
	for start := 0; start < len(samples); start += r.BatchSize {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		end := min(start+r.BatchSize, len(samples))
		var seqs [][]int
		var spans [][2]int
		for _, s := range samples[start:end] {
			prompt, err := tokenizer.ChatPrompt(r.LM.Tokenizer, s.Messages)
			if err != nil {
				return nil, err
			}
			resp := r.LM.Tokenizer.Encode(s.Response, false)
			if len(resp) == 0 {
				resp = r.LM.Tokenizer.Encode(" ", false) // an empty reply is measured on a blank token
			}
			seqs = append(seqs, append(prompt, resp...))
			spans = append(spans, [2]int{len(prompt), len(prompt) + len(resp)})
		}
		tf, err := r.LM.TeacherForce(seqs, nil, spans)
		if err != nil {
			return nil, err
		}
		for j := range seqs {
			p := steer.Dot(tf.Means[j][r.Layer], u)
			out[start+j] = 1 / (1 + math.Exp(-2*(p-r.Mid)/r.Half))
		}
	}
	return out, nil
}

// CommandReward runs an external program: samples as JSON lines on its stdin, one score per line on its stdout.
type CommandReward struct {
	Program string
	Timeout time.Duration // per call; 0 is commandTimeout
}

// commandTimeout bounds one call of a reward program (a judge model scoring a batch takes minutes, not hours);
// maxCommandOutput bounds what it may print.
const (
	commandTimeout   = 10 * time.Minute
	maxCommandOutput = 16 << 20
)

// Name implements Reward.
func (r CommandReward) Name() string { return "cmd:" + r.Program }

// Score implements Reward.
func (r CommandReward) Score(ctx context.Context, samples []Sample) ([]float64, error) {
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, s := range samples {
		if err := enc.Encode(s); err != nil {
			return nil, err
		}
	}
	f := strings.Fields(r.Program)
	if len(f) == 0 {
		return nil, fmt.Errorf("cmd: give a program")
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = commandTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, f[0], f[1:]...)
	cmd.Stdin = &in
	// The program runs in its own process group, stopped whole on timeout or cancellation: no orphaned judge
	// keeps running (or holds the pipes) after the trainer has moved on.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr cappedWriter
	stdout.limit, stderr.limit = maxCommandOutput, 64<<10
	stdout.onOver = cancel // a program that floods its output is stopped, not read forever
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if stdout.over {
		return nil, fmt.Errorf("%s printed more than %d MiB: it must print one score per line", r.Program, maxCommandOutput>>20)
	}
	if err != nil {
		if cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return nil, fmt.Errorf("%s gave no scores within %v for %d samples: it must print one score per line and exit", r.Program, timeout, len(samples))
		}
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndex(msg, "\n"); i >= 0 {
			msg = msg[i+1:]
		}
		return nil, fmt.Errorf("%s failed (%v): %s", r.Program, err, msg)
	}
	out := stdout.buf.Bytes()
	var scores []float64
	for i, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		v, err := strconv.ParseFloat(line, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: output line %d is %q, not a number", r.Program, i+1, line)
		}
		scores = append(scores, v)
	}
	return scores, nil
}

// cappedWriter keeps the first limit bytes written to it, notes whether more came and calls onOver then. (It
// holds its buffer in a field: an embedded bytes.Buffer would lend it ReadFrom, which io.Copy prefers to Write.)
type cappedWriter struct {
	buf    bytes.Buffer
	limit  int
	over   bool
	onOver func()
}

func (w *cappedWriter) Write(p []byte) (int, error) {
	if room := w.limit - w.buf.Len(); len(p) > room {
		w.buf.Write(p[:max(room, 0)])
		if !w.over && w.onOver != nil {
			w.onOver()
		}
		w.over = true
		return len(p), nil
	}
	return w.buf.Write(p)
}

func (w *cappedWriter) String() string { return w.buf.String() }

// WeightedReward is a weighted sum of rewards ("0.7*axis+0.3*style:pirate").
type WeightedReward struct {
	Parts   []Reward
	Weights []float64
}

// Name implements Reward.
func (w WeightedReward) Name() string {
	var s []string
	for i, p := range w.Parts {
		s = append(s, strconv.FormatFloat(w.Weights[i], 'g', -1, 64)+"*"+p.Name())
	}
	return strings.Join(s, "+")
}

// Score implements Reward: each part is checked on its own, so a failing part is named.
func (w WeightedReward) Score(ctx context.Context, samples []Sample) ([]float64, error) {
	out := make([]float64, len(samples))
	for i, p := range w.Parts {
		scores, err := checked(ctx, p, samples)
		if err != nil {
			return nil, err
		}
		for j, s := range scores {
			out[j] += w.Weights[i] * s
		}
	}
	return out, nil
}

// RewardNames are the rewards a spec may name besides cmd:PROGRAM: a constructor per name, given what follows
// "NAME:" in the term ("style:pirate" gives "pirate"; "exact" gives "").
type RewardNames map[string]func(arg string) (Reward, error)

// ParseReward reads a spec: terms joined by "+", each "[WEIGHT*]NAME[:ARG]" with NAME one of names or cmd
// (cmd:PROGRAM: a program that scores samples).
func ParseReward(spec string, names RewardNames) (Reward, error) {
	var w WeightedReward
	for _, term := range strings.Split(spec, "+") {
		term = strings.TrimSpace(term)
		weight := 1.0
		if i := strings.Index(term, "*"); i >= 0 && !strings.HasPrefix(term, "cmd:") {
			v, err := strconv.ParseFloat(strings.TrimSpace(term[:i]), 64)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("--reward %q: %q is not a weight (a finite number)", spec, term[:i])
			}
			weight, term = v, strings.TrimSpace(term[i+1:])
		}
		var r Reward
		name, arg, _ := strings.Cut(term, ":")
		if build, ok := names[name]; ok {
			var err error
			if r, err = build(arg); err != nil {
				return nil, fmt.Errorf("--reward %s: %w", term, err)
			}
		} else if name == "cmd" && arg != "" {
			r = CommandReward{Program: arg}
		} else {
			known := make([]string, 0, len(names)+1)
			for n := range names {
				known = append(known, n)
			}
			sort.Strings(known)
			return nil, fmt.Errorf("--reward %q: %q is not one of %s or cmd:PROGRAM", spec, term, strings.Join(known, ", "))
		}
		w.Parts, w.Weights = append(w.Parts, r), append(w.Weights, weight)
	}
	return w, nil
}

// ScoreChecked scores samples with a reward, refusing wrong counts and non-finite scores with a clear error.
func ScoreChecked(ctx context.Context, r Reward, samples []Sample) ([]float64, error) {
	return checked(ctx, r, samples)
}
