package main

import (
	"fmt"
	"io"
	"os"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/term"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/train"
	"github.com/keel-lab/keel/tui"
)

// runTUI: keel [--model DIR] [--axis DIR|FILE] [--no-alt-screen] [--no-record] ...: the workbench.
func runTUI(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("", stderr)
	var mf modelFlags
	mf.register(fs)
	axisPath := fs.String("axis", "", "an extraction folder (axis, calibration) or an axis file; default: the embedded model's")
	ignoreHash := fs.Bool("ignore-hash", false, "accept an axis made for other weights of the same shape (a fine-tune)")
	system := fs.String("system", "", "system prompt")
	noAlt := fs.Bool("no-alt-screen", false, "draw in the normal screen (scrollback keeps the output)")
	noRecord := fs.Bool("no-record", false, "do not record this chat")
	record := fs.String("record", "", "session file to write (default: a new file in the sessions folder)")
	runs := fs.String("runs", train.DefaultRunsDir(), "where background fine-tunes write their runs")
	cfg := tui.DefaultConfig()
	fs.Float64Var(&cfg.Sampling.Temperature, "temperature", cfg.Sampling.Temperature, "sampling temperature (0 = greedy)")
	fs.Float64Var(&cfg.Sampling.TopP, "top-p", cfg.Sampling.TopP, "nucleus mass")
	fs.IntVar(&cfg.Sampling.MaxTokens, "max-tokens", cfg.Sampling.MaxTokens, "tokens per reply at most")
	fs.Uint64Var(&cfg.Sampling.Seed, "seed", cfg.Sampling.Seed, "sampling seed")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := tui.LoadConfig(&cfg); err != nil {
		return err
	}
	if err := (model.Sampling{Temperature: cfg.Sampling.Temperature, TopP: cfg.Sampling.TopP}).Check(); err != nil {
		return usageError{fmt.Errorf("--%w (or in the config file)", err)}
	}
	embedded := mf.dir == ""
	rt, lm, err := mf.load()
	if err != nil {
		return err
	}
	if *axisPath == "" && embedded {
		if *axisPath, err = models.PersonaAxis(lm.Dir); err != nil {
			return err
		}
	}
	engineFor := func(lm *model.LM, axis string) (*tui.LMEngine, error) {
		return tui.NewLMEngine(lm, tui.EngineConfig{Device: mf.device, DType: mf.dtype, AxisPath: axis, IgnoreHash: *ignoreHash,
			Record: !*noRecord, RecordPath: *record, Version: version})
	}
	eng, err := engineFor(lm, *axisPath)
	if err != nil {
		lm.Close()
		return err
	}
	exe, _ := os.Executable()
	jobs := &tui.ProcessJobs{RT: rt, Exe: exe, Model: lm.Dir, RunsDir: *runs}
	profile := tui.ProfileFromEnv(os.Getenv)
	// The bubbles components style themselves through lipgloss's default renderer: give it the environment's
	// profile and keel's fixed dark background, so every pane follows the same colours as keel's own styles.
	lipgloss.SetColorProfile(profile)
	lipgloss.SetHasDarkBackground(true)
	opt := tui.Options{Engine: eng, Jobs: jobs, Sampling: cfg.Sampling, Controls: tui.DefaultControls(lm.NumLayers()).WithCap(eng.Info().BestCap, lm.NumLayers()), System: *system,
		Styles: tui.NewStyles(profile), Keys: cfg.Keys, Mouse: cfg.Mouse, Tint: cfg.Tint}
	opt.Load = func(dir, axis string) (tui.Engine, error) {
		dev, _ := torch.ParseDevice(mf.device)
		dt, _ := torch.ParseDType(mf.dtype)
		next, err := model.Load(rt, dir, model.Options{Device: dev, DType: dt})
		if err != nil {
			return nil, err
		}
		e, err := engineFor(next, axis)
		if err != nil {
			next.Close()
			return nil, err
		}
		jobs.Model = dir
		return e, nil
	}
	progOpts := []tea.ProgramOption{tea.WithOutput(stdout)}
	if !*noAlt {
		progOpts = append(progOpts, tea.WithAltScreen())
	}
	app := tui.New(opt)
	p := tea.NewProgram(app, progOpts...)
	jobs.Send = p.Send
	_, err = p.Run()
	final := app.Engine()
	if info := final.Info(); info.Recording != "" {
		fmt.Fprintf(stderr, "recorded to %s\n", info.Recording)
	}
	if cerr := final.Close(); err == nil {
		err = cerr
	}
	return err
}

// stdinIsTerminal decides between the TUI and the plain line REPL for `keel chat`.
func stdinIsTerminal() bool { return term.IsTerminal(os.Stdin.Fd()) }
