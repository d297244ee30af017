package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"github.com/charmbracelet/x/term"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/workbench"
)

func runGenerate(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var mf cli.ModelFlags
	mf.Register(fs)
	prompt := fs.String("prompt", "", "text to continue (empty: start from BOS)")
	maxTokens := fs.Int("max-tokens", 256, "tokens to generate at most")
	temperature := fs.Float64("temperature", 0, "sampling temperature (0 = greedy)")
	topK := fs.Int("top-k", 0, "keep the k most likely tokens (0 = off)")
	topP := fs.Float64("top-p", 1, "nucleus sampling mass (1 = off)")
	minP := fs.Float64("min-p", 0, "drop tokens below min-p times the top probability (0 = off)")
	rep := fs.Float64("repetition-penalty", 1, "repetition penalty (1 = off)")
	seed := fs.Uint64("seed", 0, "sampling seed")
	chat := fs.Bool("chat", true, "the prompt is a user's message, rendered with the model's chat template as keel serve and the workbench do (a model without one continues the text); --chat=false continues the prompt as raw text")
	axisDir := fs.String("axis", "", "axis folder for --cap and --steer; default: the model's own axis/ (the embedded model has one)")
	capFlag := fs.String("cap", "", "cap: on (the axis folder's calibrated rule) or a rule's id (layers_A:B-pP)")
	steerC := fs.Float64("steer", 0, "steer by C times the layer's average residual norm (0 = off)")
	steerLayer := fs.Int("steer-layer", -1, "the layer steering acts at (default: the middle one)")
	positions := fs.String("positions", "all", "where --cap and --steer act: all (every position) or generated (where reply tokens are chosen)")
	presence := fs.Float64("presence-penalty", 0, "OpenAI's presence penalty over the generated tokens (-2 to 2; 0 = off)")
	frequency := fs.Float64("frequency-penalty", 0, "OpenAI's frequency penalty over the generated tokens (-2 to 2; 0 = off)")
	biasFlag := fs.String("logit-bias", "", "biases added to tokens' logits: ID:BIAS,ID:BIAS (-100 to 100)")
	logprobs := fs.Int("logprobs", -1, "after the text, each token's log-probability and the N most likely at its place (0 to 20; -1 = off)")
	asJSON := fs.Bool("json", false, "print one JSON object: the text and, with --logprobs, each token's log-probabilities")
	ignoreEOS := fs.Bool("ignore-eos", false, "go on past the end-of-sequence token to --max-tokens (benchmarks, as llama.cpp's --ignore-eos)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected argument %q (the prompt goes in --prompt)", fs.Arg(0))
	}
	sampling := model.Sampling{Temperature: *temperature, TopK: *topK, TopP: *topP, MinP: *minP, RepetitionPenalty: *rep, Seed: *seed,
		PresencePenalty: *presence, FrequencyPenalty: *frequency, Logprobs: *logprobs >= 0, TopLogprobs: max(0, *logprobs)}
	for _, kv := range cli.SplitList(*biasFlag) {
		id, bias, ok := strings.Cut(kv, ":")
		i, err1 := strconv.Atoi(id)
		b, err2 := strconv.ParseFloat(bias, 64)
		if !ok || err1 != nil || err2 != nil {
			return cli.Usagef("--logit-bias %q: give ID:BIAS pairs, such as 50256:-100,13:5", kv)
		}
		if sampling.LogitBias == nil {
			sampling.LogitBias = map[int]float64{}
		}
		sampling.LogitBias[i] = b
	}
	if err := sampling.Check(); err != nil {
		return cli.Usagef("--%w", err)
	}
	if *rep == 0 {
		return cli.Usagef("--repetition-penalty 0: give a number > 0 (1 = off)")
	}
	if *maxTokens <= 0 {
		return cli.Usagef("--max-tokens %d: give at least 1", *maxTokens)
	}
	_, lm, err := mf.Load()
	if err != nil {
		return err
	}
	defer lm.Close()
	if err := sampling.CheckVocab(lm.Config.VocabSize); err != nil {
		return cli.Usagef("--%w", err)
	}
	var hooks *model.Hooks
	if *capFlag != "" || *steerC != 0 {
		ivs, err := generateInterventions(lm, cli.AxisPath(*axisDir), workbench.KeelOptions{Cap: *capFlag, Positions: *positions}, *steerC, *steerLayer)
		if err != nil {
			return err
		}
		hooks = model.NewHooks(ivs...)
	}
	var ids []int
	if *chat {
		if ids, err = tokenizer.ChatPrompt(lm.Tokenizer, []tokenizer.Message{{Role: "user", Content: *prompt}}); err != nil {
			return err
		}
	} else {
		ids = lm.Tokenizer.Encode(*prompt, true)
	}
	if len(ids) == 0 {
		return fmt.Errorf("the prompt encodes to no tokens and the tokenizer has no BOS")
	}
	if window := lm.Window(); window > 0 && len(ids) >= window {
		return fmt.Errorf("the prompt is %d tokens, the model's context window %d: shorten it", len(ids), window)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// A terminal sees every token as it comes; a pipe or a file gets the text in blocks (a write per token is a
	// system call per token, which at thousands of tokens a second is a third of the time).
	out := bufio.NewWriterSize(stdout, 32<<10)
	live := isTerminalWriter(stdout) && !*asJSON
	var scored []scoredToken
	isEOS := map[int]bool{}
	for _, e := range lm.EOS() {
		isEOS[e] = true
	}
	prev := ids[len(ids)-1]
	var eos []int
	if *ignoreEOS {
		eos = []int{-1}
	}
	res, err := lm.GenerateText(ctx, [][]int{ids}, model.TextConfig{
		GenerateConfig: model.GenerateConfig{MaxTokens: min(*maxTokens, lm.Window()-len(ids)), Sampling: sampling, Hooks: hooks, EOS: eos},
		OnText: func(text string, st model.Step) error {
			if st.Logprobs != nil && !isEOS[st.ID] {
				scored = append(scored, scoreOf(lm.Tokenizer, prev, st.Logprobs))
			}
			prev = st.ID
			if *asJSON {
				return nil
			}
			if _, err := out.WriteString(text); err != nil {
				return err
			}
			if live {
				return out.Flush()
			}
			return nil
		},
	})
	switch {
	case *asJSON && len(res) == 1:
		enc := json.NewEncoder(out)
		enc.SetEscapeHTML(false)
		if jerr := enc.Encode(map[string]any{"text": res[0].Text, "finish_reason": res[0].Reason, "tokens": scored}); err == nil {
			err = jerr
		}
	case *asJSON:
	default:
		out.WriteString("\n")
		for _, t := range scored {
			fmt.Fprintf(out, "%s\t%.6f", strconv.Quote(t.Token), t.Logprob)
			for _, x := range t.Top {
				fmt.Fprintf(out, "\t%s %.6f", strconv.Quote(x.Token), x.Logprob)
			}
			out.WriteString("\n")
		}
	}
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if err == nil && len(res) == 1 && res[0].Text == "" {
		// An empty line alone reads as a failure: say what happened.
		fmt.Fprintf(stderr, "keel generate: the model ended at once (its first token was the end of a turn); %s\n",
			map[bool]string{true: "--chat=false continues the prompt as raw text", false: "--chat asks it as a user's message"}[*chat])
	}
	return err
}

// scoredToken is a generated token with its log-probability and the most likely tokens at its place, as
// `keel generate --logprobs N` prints them (and keel serve's logprobs give them).
type scoredToken struct {
	tokenScore
	Top []tokenScore `json:"top_logprobs"`
}

// tokenScore is one token at a position with its log-probability.
type tokenScore struct {
	ID      int     `json:"id"`
	Token   string  `json:"token"` // the bytes the token adds to the text
	Logprob float64 `json:"logprob"`
}

func scoreOf(tok tokenizer.Tokenizer, prev int, lp *model.Logprobs) scoredToken {
	score := func(x model.TokenLogprob) tokenScore {
		return tokenScore{x.ID, string(tok.TokenBytes(x.ID, prev)), x.Logprob}
	}
	t := scoredToken{tokenScore: score(lp.Chosen)}
	for _, x := range lp.Top {
		t.Top = append(t.Top, score(x))
	}
	return t
}

func runInfo(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected argument %q: keel info takes none", fs.Arg(0))
	}
	rt, err := torch.Load()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "shim: %s\n%s\nthreads=%d\n", rt.Path, rt.Info, rt.NumThreads())
	return nil
}

// generateInterventions reads keel generate's --cap and --steer as keel serve reads a request's "keel" object.
func generateInterventions(lm *model.LM, axisDir string, k workbench.KeelOptions, c float64, layer int) ([]model.Intervention, error) {
	axis, err := probes.OpenModelAxis(lm, axisDir, false)
	if err != nil {
		return nil, err
	}
	if axis == nil {
		return nil, cli.Usagef("--cap and --steer need --axis DIR (an axis folder for this model)")
	}
	if c != 0 {
		k.Steer = &workbench.SteerOptions{C: c}
		if layer >= 0 {
			k.Steer.Layer = &layer
		}
	}
	ivs, _, err := workbench.KeelInterventions(axis, lm.NumLayers(), k)
	if err != nil {
		return nil, cli.UsageError{Err: err}
	}
	return ivs, nil
}

// isTerminalWriter reports whether w is a terminal.
func isTerminalWriter(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(f.Fd())
}
