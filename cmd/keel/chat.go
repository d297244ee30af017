package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/steer"
)

// runChat is the plain line REPL: one line per user turn, the reply streamed, slash commands for settings;
// every chat is recorded unless --no-record.
func runChat(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("chat", stderr)
	var mf modelFlags
	mf.register(fs)
	axisPath := fs.String("axis", "", "axis file: record each token's projection at its layers")
	ignoreHash := fs.Bool("ignore-hash", false, "accept an axis made for other weights of the same shape (a fine-tune)")
	system := fs.String("system", "", "system prompt")
	maxTokens := fs.Int("max-tokens", 256, "tokens per reply at most")
	temperature := fs.Float64("temperature", 0.7, "sampling temperature (0 = greedy)")
	topP := fs.Float64("top-p", 0.9, "nucleus mass")
	seed := fs.Uint64("seed", 0, "sampling seed")
	record := fs.String("record", "", "session file to write (default: a new file in the sessions folder)")
	noRecord := fs.Bool("no-record", false, "do not record this chat")
	if err := parse(fs, args); err != nil {
		return err
	}
	rt, lm, err := mf.load()
	if err != nil {
		return err
	}
	_ = rt
	defer lm.Close()
	var axis *steer.Axis
	if *axisPath != "" {
		if axis, err = loadAxisFor(*axisPath, lm, *ignoreHash); err != nil {
			return err
		}
	}
	sampling := model.Sampling{Temperature: *temperature, TopP: *topP, Seed: *seed}
	if err := sampling.Check(); err != nil {
		return usageError{fmt.Errorf("--%w", err)}
	}
	var rec *sessions.Recording
	if !*noRecord {
		path := *record
		if path == "" {
			path = sessions.NewPath(sessions.DefaultDir())
		}
		h := sessions.Header{Keel: version, Model: absPath(mf.dir), Sampling: sampling, Seed: *seed, Term: sessions.Term{Cols: 80, Rows: 24}}
		if h.ModelSHA256, err = weightsSHA256(mf.dir); err != nil {
			return err
		}
		if axis != nil {
			h.Axis, h.Layers = absPath(*axisPath), axis.LayerList()
			h.AxisSHA256, _ = steer.FileSHA256(*axisPath)
		}
		r, err := sessions.Create(path, h)
		if err != nil {
			return err
		}
		defer r.Close()
		rec = &sessions.Recording{Rec: r}
		if axis != nil {
			rec.Axis = axis.Layers
		}
		fmt.Fprintf(stderr, "recording to %s\n", path)
	}
	var msgs []tokenizer.Message
	if *system != "" {
		msgs = append(msgs, tokenizer.Message{"role": "system", "content": *system})
		if rec != nil {
			rec.Say("system", *system)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "/") {
			quit, msg := chatCommand(line, &msgs, &sampling, maxTokens, rec)
			if msg != "" {
				fmt.Fprintln(stdout, msg)
			}
			if quit {
				return nil
			}
			continue
		}
		msgs = append(msgs, tokenizer.Message{"role": "user", "content": line})
		if rec != nil {
			if err := rec.Say("user", line); err != nil {
				return err
			}
		}
		ids, err := tokenizer.ChatPrompt(lm.Tokenizer, msgs)
		if err != nil {
			return err
		}
		g := model.GenerateConfig{MaxTokens: *maxTokens, Sampling: sampling}
		print := func(t string) { io.WriteString(stdout, t) }
		var reply string
		if rec != nil {
			reply, _, err = rec.Generate(ctx, lm, ids, nil, g, print)
		} else {
			var res []model.TextResult
			res, err = lm.GenerateText(ctx, [][]int{ids}, model.TextConfig{GenerateConfig: g, OnText: func(t string, _ model.Step) error { print(t); return nil }})
			if len(res) > 0 {
				reply = res[0].Text
			}
		}
		fmt.Fprintln(stdout)
		if err != nil {
			return err
		}
		msgs = append(msgs, tokenizer.Message{"role": "assistant", "content": reply})
	}
	return in.Err()
}

// chatCommand handles a slash command; it reports whether to quit and what to print.
func chatCommand(line string, msgs *[]tokenizer.Message, sampling *model.Sampling, maxTokens *int, rec *sessions.Recording) (bool, string) {
	f := strings.Fields(line)
	switch f[0] {
	case "/quit", "/exit":
		return true, ""
	case "/help":
		return false, "commands: /system TEXT, /set temperature|top-p|max-tokens|seed VALUE, /mark good|bad|LABEL, /clear, /quit"
	case "/clear":
		*msgs = nil
		return false, "conversation cleared"
	case "/system":
		text := strings.TrimSpace(strings.TrimPrefix(line, "/system"))
		*msgs = append([]tokenizer.Message{{"role": "system", "content": text}}, *msgs...)
		if rec != nil {
			rec.Say("system", text)
		}
		return false, "system prompt set"
	case "/mark":
		if len(f) != 2 {
			return false, "usage: /mark good|bad|LABEL"
		}
		if rec == nil {
			return false, "not recording (--no-record)"
		}
		rec.Mark(f[1])
		return false, "marked " + f[1]
	case "/set":
		if len(f) != 3 {
			return false, "usage: /set temperature|top-p|max-tokens|seed VALUE"
		}
		v, err := strconv.ParseFloat(f[2], 64)
		if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return false, fmt.Sprintf("bad value %q for %s: want a non-negative number", f[2], f[1])
		}
		next := *sampling
		switch f[1] {
		case "temperature":
			next.Temperature = v
		case "top-p":
			next.TopP = v
		case "max-tokens":
			if v < 1 || v > 1e9 {
				return false, fmt.Sprintf("max-tokens %s: give a count from 1", f[2])
			}
			*maxTokens = int(v)
		case "seed":
			next.Seed = uint64(v)
		default:
			return false, fmt.Sprintf("unknown setting %q: temperature, top-p, max-tokens, seed", f[1])
		}
		if err := next.Check(); err != nil {
			return false, err.Error()
		}
		*sampling = next
		if rec != nil {
			rec.Control(f[1], v)
		}
		return false, fmt.Sprintf("%s = %s", f[1], f[2])
	}
	return false, fmt.Sprintf("unknown command %s: /help lists them", f[0])
}

// weightsSHA256 is the sha256 of the model's safetensors files, in name order (a session names exactly the
// weights it was recorded with).
func weightsSHA256(dir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("%s: no *.safetensors to fingerprint", dir)
	}
	sort.Strings(files)
	h := sha256.New()
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
