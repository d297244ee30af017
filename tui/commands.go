package tui

import (
	"fmt"
	"strconv"
	"strings"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/internal/atomicfile"
)

// slashHelp lists the slash commands.
const slashHelp = "/system TEXT · /set temperature|top-p|max-tokens|seed V · /cap on|off|p25|A:B · /steer C [LAYER]|off · " +
	"/layer N · /axis DIR · /model DIR · /train sft|alol|ppo ... · /jobs · /cancel ID · /load ID[@STEP] · /save FILE · " +
	"/replay FILE · /mark LABEL · /tint · /mouse · /clear · /quit"

// jobStartedMsg is a background job launched off the UI goroutine.
type jobStartedMsg struct {
	id, kind string
	err      error
}

// engineMsg is a model (re)loaded off the UI goroutine.
type engineMsg struct {
	eng  Engine
	err  error
	what string
}

// runCommand runs a slash command; bad ones leave an inline message.
func (a *App) runCommand(line string) tea.Cmd {
	f := strings.Fields(line)
	arg := strings.TrimSpace(strings.TrimPrefix(line, f[0]))
	a.notice = ""
	switch f[0] {
	case "/quit", "/exit":
		if a.generating {
			a.stop()
		}
		a.quitting = true
		return tea.Quit
	case "/help":
		a.showHelp = true
		a.resize(a.width, a.height)
		a.notice = slashHelp
	case "/clear":
		if a.generating {
			a.notice = "a reply is streaming: ctrl+c stops it first"
			return nil
		}
		a.turns = nil
		if a.system != "" {
			a.turns = append(a.turns, turn{role: "system", text: a.system})
		}
		a.rerenderChat()
		a.notice = "chat cleared"
	case "/system":
		a.system = arg
		var kept []turn
		for _, t := range a.turns {
			if t.role != "system" {
				kept = append(kept, t)
			}
		}
		if arg != "" {
			kept = append([]turn{{role: "system", text: arg}}, kept...)
		}
		a.turns = kept
		a.rerenderChat()
		a.notice = "system prompt set"
	case "/set":
		return a.setCommand(f)
	case "/cap":
		c := a.controls
		if len(f) == 1 {
			f = append(f, "toggle")
		}
		for _, v := range f[1:] {
			switch {
			case v == "on":
				c.CapOn = true
			case v == "off":
				c.CapOn = false
			case v == "toggle":
				c.CapOn = !c.CapOn
			case strings.HasPrefix(v, "p"):
				c.Percentile, c.CapOn = v, true
			case strings.Contains(v, ":"):
				var lo, hi int
				if _, err := fmt.Sscanf(v, "%d:%d", &lo, &hi); err != nil {
					a.notice = fmt.Sprintf("/cap %s: give layers as A:B", v)
					return nil
				}
				c.Window, c.CapOn = [2]int{lo, hi}, true
			default:
				a.notice = "/cap: on, off, a percentile (p25) or a layer window (2:6)"
				return nil
			}
		}
		a.applyControls(c)
	case "/steer":
		c := a.controls
		if len(f) == 1 {
			f = append(f, "toggle")
		}
		switch f[1] {
		case "on":
			c.SteerOn = true
		case "off":
			c.SteerOn = false
		case "toggle":
			c.SteerOn = !c.SteerOn
		default:
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil || v < -20 || v > 20 {
				a.notice = fmt.Sprintf("/steer %s: give a strength c (e.g. -1 away from the Assistant, 1 toward it) or off", f[1])
				return nil
			}
			c.SteerCoeff, c.SteerOn = v, true
			if len(f) > 2 {
				l, err := strconv.Atoi(f[2])
				if err != nil {
					a.notice = fmt.Sprintf("/steer: layer %q is not a number", f[2])
					return nil
				}
				c.SteerLayer = l
			}
		}
		a.applyControls(c)
	case "/layer":
		if len(f) != 2 {
			a.notice = "/layer N: the layer to plot"
			return nil
		}
		l, err := strconv.Atoi(f[1])
		if err != nil {
			a.notice = fmt.Sprintf("/layer %s: not a number", f[1])
			return nil
		}
		c := a.controls
		c.Layer = l
		a.applyControls(c)
	case "/tint":
		a.tint = !a.tint
		for i := range a.turns {
			a.turns[i].cached = ""
		}
		a.rerenderChat()
	case "/mouse":
		return a.key(tea.KeyMsg{Type: tea.KeyF2})
	case "/jobs":
		a.showJobs = !a.showJobs
		a.resize(a.width, a.height)
	case "/train":
		if a.opt.Jobs == nil {
			a.notice = "training is not available in this session"
			return nil
		}
		if len(f) < 2 {
			a.notice = "/train sft --data FILE --steps N [--lora R] [--lr LR] · /train alol --data FILE --reward SPEC [--algorithm a_lol] · /train ppo --prompts FILE --reward SPEC"
			return nil
		}
		jobs, kind, args := a.opt.Jobs, f[1], f[2:]
		a.notice = "starting a " + kind + " job ..."
		return func() tea.Msg {
			id, err := jobs.Start(kind, args)
			return jobStartedMsg{id, kind, err}
		}
	case "/cancel":
		if a.opt.Jobs == nil || len(f) != 2 {
			a.notice = "/cancel ID"
			return nil
		}
		if err := a.opt.Jobs.Cancel(f[1]); err != nil {
			a.notice = err.Error()
		} else {
			a.notice = "cancelling " + f[1]
		}
	case "/load", "/model", "/axis":
		if len(f) != 2 {
			a.notice = f[0] + " needs one argument"
			return nil
		}
		if a.generating {
			a.notice = "a reply is streaming: ctrl+c stops it first"
			return nil
		}
		if a.opt.Load == nil {
			a.notice = "loading is not available in this session"
			return nil
		}
		dir, axis := a.opt.Engine.Info().Model, a.opt.Engine.Info().Axis
		var jobs JobRunner
		switch f[0] {
		case "/load":
			if a.opt.Jobs == nil {
				a.notice = "/load needs the jobs of this machine, which this session has not"
				return nil
			}
			jobs = a.opt.Jobs
		case "/model":
			dir = f[1]
		case "/axis":
			axis = f[1]
		}
		a.notice = "loading " + f[1] + " ..."
		load := a.opt.Load
		return func() tea.Msg {
			if jobs != nil {
				var err error
				if dir, err = jobs.ModelDir(f[1]); err != nil {
					return engineMsg{nil, err, f[1]}
				}
			}
			eng, err := load(dir, axis)
			return engineMsg{eng, err, f[1]}
		}
	case "/save":
		if len(f) != 2 {
			a.notice = "/save FILE: write the chat as a transcript"
			return nil
		}
		var b strings.Builder
		for _, t := range a.turns {
			fmt.Fprintf(&b, "%s: %s\n\n", t.role, t.text)
		}
		if err := atomicfile.WriteFile(f[1], []byte(b.String())); err != nil {
			a.notice = err.Error()
		} else {
			a.notice = "saved " + f[1]
		}
	case "/replay":
		if len(f) != 2 {
			a.notice = "/replay FILE: a recorded session (keel sessions list)"
			return nil
		}
		return a.startReplay(f[1])
	case "/mark":
		if arg == "" {
			arg = "bookmark"
		}
		if err := a.opt.Engine.Mark(arg); err != nil {
			a.notice = err.Error()
		} else {
			a.notice = "marked " + arg
		}
	default:
		a.notice = fmt.Sprintf("unknown command %s: /help lists them", f[0])
	}
	return nil
}

func (a *App) setCommand(f []string) tea.Cmd {
	if len(f) != 3 {
		a.notice = "/set temperature|top-p|max-tokens|seed VALUE"
		return nil
	}
	switch f[1] {
	case "temperature", "top-p", "max-tokens", "seed":
	default:
		a.notice = fmt.Sprintf("/set %s: temperature, top-p, max-tokens or seed", f[1])
		return nil
	}
	v, err := strconv.ParseFloat(f[2], 64)
	if err != nil || v < 0 || badNumber(v) {
		a.notice = fmt.Sprintf("/set %s %s: want a non-negative number", f[1], f[2])
		return nil
	}
	switch f[1] {
	case "temperature", "top-p":
		next := model.Sampling{Temperature: a.sampling.Temperature, TopP: a.sampling.TopP}
		if f[1] == "temperature" {
			next.Temperature = v
		} else {
			next.TopP = v
		}
		err := next.Check()
		if err == nil && next.TopP == 0 {
			err = fmt.Errorf("top-p 0: give a number in (0, 1] (1 = off)")
		}
		if err != nil {
			a.notice = "/set " + err.Error()
			return nil
		}
		a.sampling.Temperature, a.sampling.TopP = next.Temperature, next.TopP
	case "max-tokens":
		if v < 1 {
			a.notice = "/set max-tokens: give at least 1"
			return nil
		}
		a.sampling.MaxTokens = int(v)
	case "seed":
		a.sampling.Seed = uint64(v)
	}
	a.notice = f[1] + " = " + f[2]
	return nil
}

func badNumber(v float64) bool { return v != v || v > 1e9 }

// applyControls hands new controls to the engine; refused ones leave the old in force and say why.
func (a *App) applyControls(c Controls) {
	if err := a.opt.Engine.Apply(c); err != nil {
		a.notice = err.Error()
		a.opt.Engine.Apply(a.controls)
		return
	}
	a.controls = c
	for i := range a.turns {
		a.turns[i].cached = "" // the tint follows the plotted layer
	}
	a.rerenderChat()
}
