package workbench

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/probes"
)

// Action is what a command asks of the front end, beyond the session (a screen, a pane, leaving).
type Action int

// Actions.
const (
	NoAction    Action = iota
	Quit               // leave the chat
	ShowHelp           // show the command list (Result.Notice holds it)
	ToggleTint         // colour the replies by their projection, or stop
	ToggleMouse        // the mouse scrolls the chat, or the terminal selects text
	ToggleJobs         // show or hide the jobs
	Replay             // play the recorded session at Result.Arg
	PlotMode           // plot Result.Arg: "tokens" (the latest tokens) or "turns" (each reply's mean over the session)
)

// Result is what a command did: the line to show, an action for the front end, and slow work (loading a model,
// starting a job) that the front end runs where it may block; its Result is shown when it ends.
type Result struct {
	Notice string
	Action Action
	Arg    string
	Slow   func() Result
}

// Command is one slash command: its name, arguments, help and handler. The handler checks every argument before
// it changes anything.
type Command struct {
	Name, Args, Help string
	Aliases          []string
	run              func(s *Session, c call) Result
}

// call is one invocation: the words after the name and the raw text after it.
type call struct {
	name string
	args []string
	rest string
}

// Commands is the table every front end answers, in the order /help lists it.
func Commands() []Command {
	return []Command{
		{Name: "/system", Args: "TEXT", Help: "set the system prompt (empty: none)", run: (*Session).cmdSystem},
		{Name: "/set", Args: "NAME VALUE", Help: "sampling (temperature, top-p, ...), context policy, positions", run: (*Session).cmdSet},
		{Name: "/cap", Args: "[on|off|pP|A:B ...]", Help: "activation capping: toggle, switch, percentile, layer window", run: (*Session).cmdCap},
		{Name: "/steer", Args: "[on|off|C [LAYER]]", Help: "steer along the axis with strength C (-1 away from the Assistant)", run: (*Session).cmdSteer},
		{Name: "/layer", Args: "N", Help: "the layer whose projection is plotted", run: (*Session).cmdLayer},
		{Name: "/plot", Args: "tokens|turns", Help: "plot the latest tokens, or each reply's mean over the whole chat", run: (*Session).cmdPlot},
		{Name: "/axis", Args: "DIR", Help: "load an axis folder (keel axis extract --out DIR)", run: (*Session).cmdLoad},
		{Name: "/model", Args: "MODEL", Help: "load another model (a folder, a Hugging Face id or persona)", run: (*Session).cmdLoad},
		{Name: "/train", Args: "sft|alol|ppo FLAGS", Help: "fine-tune the chat's model in the background", run: (*Session).cmdTrain},
		{Name: "/jobs", Help: "show or hide the jobs", run: action(ToggleJobs)},
		{Name: "/cancel", Args: "ID", Help: "cancel a job", run: (*Session).cmdCancel},
		{Name: "/load", Args: "ID[@STEP]", Help: "chat with a job's model (or its checkpoint at STEP)", run: (*Session).cmdLoad},
		{Name: "/save", Args: "FILE", Help: "write the chat as a transcript", run: (*Session).cmdSave},
		{Name: "/replay", Args: "FILE", Help: "play a recorded session (keel sessions list)", run: (*Session).cmdReplay},
		{Name: "/mark", Args: "[LABEL]", Help: "label this turn in the recording (good, bad, ...)", run: (*Session).cmdMark},
		{Name: "/tint", Help: "colour replies by their projection, or stop", run: action(ToggleTint)},
		{Name: "/mouse", Help: "the wheel scrolls the chat, or the terminal selects", run: action(ToggleMouse)},
		{Name: "/clear", Help: "forget the conversation (the system prompt stays)", run: (*Session).cmdClear},
		{Name: "/help", Help: "this list", run: (*Session).cmdHelp},
		{Name: "/quit", Aliases: []string{"/exit"}, Help: "leave", run: action(Quit)},
	}
}

func action(a Action) func(*Session, call) Result {
	return func(*Session, call) Result { return Result{Action: a} }
}

// HelpText is the command list, one command per line.
func HelpText() string {
	var b strings.Builder
	b.WriteString("commands:")
	for _, c := range Commands() {
		fmt.Fprintf(&b, "\n  %-28s %s", strings.TrimSpace(c.Name+" "+c.Args), c.Help)
	}
	return b.String()
}

// Run answers a slash command line; every front end shows its Notice as it is.
func (s *Session) Run(line string) Result {
	f := strings.Fields(line)
	if len(f) == 0 || !strings.HasPrefix(f[0], "/") {
		return Result{Notice: "commands begin with /: /help lists them"}
	}
	c := call{name: f[0], args: f[1:], rest: strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), f[0]))}
	for _, cmd := range Commands() {
		if cmd.Name == c.name || contains(cmd.Aliases, c.name) {
			return cmd.run(s, c)
		}
	}
	return Result{Notice: fmt.Sprintf("unknown command %s: /help lists them", c.name)}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func failed(err error) Result { return Result{Notice: err.Error()} }

func (s *Session) cmdHelp(call) Result { return Result{Action: ShowHelp, Notice: HelpText()} }

func (s *Session) cmdSystem(c call) Result {
	if err := s.setSystem(c.rest); err != nil {
		return failed(err)
	}
	if c.rest == "" {
		return Result{Notice: "system prompt removed"}
	}
	return Result{Notice: "system prompt set"}
}

func (s *Session) cmdClear(call) Result {
	if err := s.clear(); err != nil {
		return failed(err)
	}
	return Result{Notice: "chat cleared"}
}

func (s *Session) cmdSet(c call) Result {
	if len(c.args) != 2 {
		return Result{Notice: "/set temperature|top-p|top-k|min-p|repetition-penalty|max-tokens|seed VALUE, /set context stop|drop-oldest, or /set positions all|generated"}
	}
	name, text := c.args[0], c.args[1]
	if name == "positions" {
		next := s.Controls()
		switch text {
		case "all":
			next.GeneratedOnly = false
		case "generated":
			next.GeneratedOnly = true
		default:
			return Result{Notice: "/set positions all|generated: the cap and the steer act at every position, or only where reply tokens are chosen"}
		}
		if err := s.Apply(next); err != nil {
			return failed(err)
		}
		return Result{Notice: "positions = " + text}
	}
	if name == "context" {
		if text != ContextStop && text != ContextDropOldest {
			return Result{Notice: "/set context stop|drop-oldest: stop at the model's window, or let the oldest turns go (each drop recorded)"}
		}
		s.mu.Lock()
		s.contextPolicy = text
		b := s.backend
		s.mu.Unlock()
		if err := b.Control("context_policy", text); err != nil {
			return failed(err)
		}
		return Result{Notice: "context = " + text}
	}
	switch name {
	case "temperature", "top-p", "top-k", "min-p", "repetition-penalty", "max-tokens", "seed":
	default:
		return Result{Notice: fmt.Sprintf("/set %s: temperature, top-p, top-k, min-p, repetition-penalty, max-tokens, seed, context or positions", name)}
	}
	v, err := strconv.ParseFloat(text, 64)
	if err != nil || v < 0 || math.IsNaN(v) || v > 1e9 {
		return Result{Notice: fmt.Sprintf("/set %s %s: want a non-negative number", name, text)}
	}
	s.mu.Lock()
	next := s.sampling
	s.mu.Unlock()
	switch name {
	case "temperature":
		next.Temperature = v
	case "top-p":
		next.TopP = v
	case "max-tokens":
		if lim := s.opt.Policy.MaxTokens; lim > 0 && v > float64(lim) {
			return Result{Notice: fmt.Sprintf("/set max-tokens %s: at most %d here (keel serve --max-tokens)", text, lim)}
		}
		next.MaxTokens = int(v)
	case "top-k":
		if v != math.Trunc(v) {
			return Result{Notice: fmt.Sprintf("/set top-k %s: give a whole number (0: off)", text)}
		}
		next.TopK = int(v)
	case "min-p":
		next.MinP = v
	case "repetition-penalty":
		next.RepetitionPenalty = v
	case "seed":
		if v != math.Trunc(v) {
			return Result{Notice: fmt.Sprintf("/set seed %s: give a whole number", text)}
		}
		next.Seed = uint64(v)
	}
	if err := next.Check(); err != nil {
		return Result{Notice: "/set " + err.Error()}
	}
	s.mu.Lock()
	s.sampling = next
	b := s.backend
	s.mu.Unlock()
	if err := b.Control(strings.ReplaceAll(name, "-", "_"), v); err != nil {
		return failed(err)
	}
	return Result{Notice: name + " = " + text}
}

func (s *Session) cmdCap(c call) Result {
	next := s.Controls()
	args := c.args
	if len(args) == 0 {
		args = []string{"toggle"}
	}
	for _, v := range args {
		switch {
		case v == "on":
			next.CapOn = true
		case v == "off":
			next.CapOn = false
		case v == "toggle":
			next.CapOn = !next.CapOn
		case strings.HasPrefix(v, "p"):
			p, err := probes.ParsePercentile(v)
			if err != nil {
				return Result{Notice: "/cap " + err.Error()}
			}
			next.Cap.P, next.CapOn = p, true
		case strings.Contains(v, ":"):
			w, err := probes.ParseWindow(v)
			if err != nil {
				return Result{Notice: "/cap " + err.Error()}
			}
			next.Cap.Window, next.CapOn = w, true
		default:
			return Result{Notice: "/cap: on, off, a percentile (p25) or a layer window (2:6)"}
		}
	}
	if err := s.Apply(next); err != nil {
		return failed(err)
	}
	if !next.CapOn {
		return Result{Notice: "capping off"}
	}
	return Result{Notice: fmt.Sprintf("capping at %s on layers %d:%d", probes.PercentileName(next.Cap.P), next.Cap.Window[0], next.Cap.Window[1])}
}

func (s *Session) cmdSteer(c call) Result {
	next := s.Controls()
	args := c.args
	if len(args) == 0 {
		args = []string{"toggle"}
	}
	switch args[0] {
	case "on":
		next.SteerOn = true
	case "off":
		next.SteerOn = false
	case "toggle":
		next.SteerOn = !next.SteerOn
	default:
		v, err := strconv.ParseFloat(args[0], 64)
		if err != nil || math.IsNaN(v) || v < -20 || v > 20 {
			return Result{Notice: fmt.Sprintf("/steer %s: give a strength c from -20 to 20 (e.g. -1 away from the Assistant, 1 toward it) or off", args[0])}
		}
		next.SteerCoeff, next.SteerOn = v, true
		if len(args) > 1 {
			l, err := strconv.Atoi(args[1])
			if err != nil {
				return Result{Notice: fmt.Sprintf("/steer: layer %q is not a number", args[1])}
			}
			next.SteerLayer = l
		}
	}
	if len(args) > 2 {
		return Result{Notice: "/steer: a strength and at most a layer"}
	}
	if err := s.Apply(next); err != nil {
		return failed(err)
	}
	if !next.SteerOn {
		return Result{Notice: "steering off"}
	}
	return Result{Notice: fmt.Sprintf("steering c %+.2f at layer %d", next.SteerCoeff, next.SteerLayer)}
}

func (s *Session) cmdLayer(c call) Result {
	if len(c.args) != 1 {
		return Result{Notice: "/layer N: the layer to plot"}
	}
	l, err := strconv.Atoi(c.args[0])
	if err != nil {
		return Result{Notice: fmt.Sprintf("/layer %s: not a number", c.args[0])}
	}
	next := s.Controls()
	next.Layer = l
	if err := s.Apply(next); err != nil {
		return failed(err)
	}
	return Result{Notice: fmt.Sprintf("plotting layer %d", l)}
}

func (s *Session) cmdPlot(c call) Result {
	if len(c.args) != 1 || (c.args[0] != "tokens" && c.args[0] != "turns") {
		return Result{Notice: "/plot tokens|turns: the latest tokens, or each reply's mean over the whole chat"}
	}
	return Result{Action: PlotMode, Arg: c.args[0]}
}

// TurnMeans is each assistant reply's mean projection at the layer it was plotted at, over the whole chat.
func (s *Session) TurnMeans() []float64 {
	var means []float64
	for _, t := range s.Turns() {
		if t.Role != "assistant" {
			continue
		}
		var sum float64
		n := 0
		for _, tok := range t.Tokens {
			if tok.HasProj {
				sum += tok.Proj
				n++
			}
		}
		if n > 0 {
			means = append(means, sum/float64(n))
		}
	}
	return means
}

func (s *Session) cmdTrain(c call) Result {
	if s.opt.Jobs == nil {
		return Result{Notice: "training is not available in this session"}
	}
	if len(c.args) < 1 {
		return Result{Notice: "/train sft --data FILE --steps N [--lora R] [--lr LR] · /train alol --data FILE --reward SPEC · /train ppo --prompts FILE --reward SPEC"}
	}
	jobs, kind, args := s.opt.Jobs, c.args[0], c.args[1:]
	return Result{Notice: "starting a " + kind + " job ...", Slow: func() Result {
		id, err := jobs.Start(kind, args)
		if err != nil {
			return failed(err)
		}
		return Result{Notice: "started job " + id + ": /jobs shows it"}
	}}
}

func (s *Session) cmdCancel(c call) Result {
	if s.opt.Jobs == nil {
		return Result{Notice: "training is not available in this session"}
	}
	if len(c.args) != 1 {
		return Result{Notice: "/cancel ID: a job's id (/jobs lists them)"}
	}
	if err := s.opt.Jobs.Cancel(c.args[0]); err != nil {
		return failed(err)
	}
	return Result{Notice: "cancelling " + c.args[0]}
}

// cmdLoad is /model DIR, /axis DIR and /load ID[@STEP]: the new backend loads off the front end's loop.
func (s *Session) cmdLoad(c call) Result {
	if len(c.args) != 1 {
		return Result{Notice: c.name + " needs one argument"}
	}
	if s.Generating() {
		return failed(ErrBusy)
	}
	if s.opt.Load == nil {
		if s.opt.NoLoad != "" {
			return Result{Notice: s.opt.NoLoad}
		}
		return Result{Notice: "loading is not available in this session"}
	}
	info := s.Info()
	dir, axis, what := info.Model, info.Axis, c.args[0]
	jobs := s.opt.Jobs
	switch c.name {
	case "/load":
		if jobs == nil {
			return Result{Notice: "/load needs the jobs of this machine, which this session has not"}
		}
	case "/model":
		dir = what
	case "/axis":
		axis = what
	}
	load := s.opt.Load
	return Result{Notice: "loading " + what + " ...", Slow: func() Result {
		if c.name == "/load" {
			var err error
			if dir, err = jobs.ModelDir(what); err != nil {
				return Result{Notice: "could not load " + what + ": " + err.Error()}
			}
		}
		next, err := load(dir, axis, s.Sampling())
		if err != nil {
			return Result{Notice: "could not load " + what + ": " + err.Error()}
		}
		if err := s.swap(next); err != nil {
			return Result{Notice: "loaded " + what + ", but: " + err.Error()}
		}
		return Result{Notice: "loaded " + what}
	}}
}

func (s *Session) cmdSave(c call) Result {
	if len(c.args) != 1 {
		return Result{Notice: "/save FILE: write the chat as a transcript"}
	}
	files := s.opt.Policy.files()
	if err := files.WriteFile(c.args[0], []byte(s.transcript())); err != nil {
		return failed(fmt.Errorf("/save: %w", err))
	}
	return Result{Notice: fmt.Sprintf("saved %d turns to %s", len(s.Turns()), files.Show(c.args[0]))}
}

func (s *Session) cmdReplay(c call) Result {
	if len(c.args) != 1 {
		return Result{Notice: "/replay FILE: a recorded session (keel sessions list)"}
	}
	return Result{Action: Replay, Arg: c.args[0]}
}

func (s *Session) cmdMark(c call) Result {
	label := c.rest
	if label == "" {
		label = "bookmark"
	}
	if s.Info().Recording == "" {
		return Result{Notice: "not recording (--no-record): nothing to mark"}
	}
	turn, err := s.current().Mark(label)
	if err != nil {
		return failed(err)
	}
	return Result{Notice: fmt.Sprintf("marked turn %d %q in %s", turn, label, s.Info().Recording)}
}
