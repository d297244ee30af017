package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/term"

	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/tui"
	"github.com/keel-lab/keel/workbench"
)

// runTUI: keel [--model DIR] [--axis DIR|FILE] [--no-alt-screen] [--no-record] ...: the workbench.
func runTUI(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	cfg := tui.DefaultConfig()
	configErr := tui.LoadConfig(&cfg) // the config file's settings are the flags' defaults
	var cf chatFlags
	cf.register(fs, cfg.Sampling)
	noAlt := fs.Bool("no-alt-screen", false, "draw in the normal screen (scrollback keeps the output)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if configErr != nil {
		return configErr
	}
	size := sessions.Term{Cols: 80, Rows: 24}
	if w, h, err := term.GetSize(os.Stdout.Fd()); err == nil && w > 0 && h > 0 {
		size = sessions.Term{Cols: w, Rows: h}
	}
	var p *tea.Program
	s, jobs, err := cf.open(size, func(u workbench.JobUpdate) {
		if p != nil {
			p.Send(u)
		}
	})
	if err != nil {
		return err
	}
	profile := tui.ProfileFromEnv(os.Getenv)
	// The bubbles components style themselves through lipgloss's default renderer: give it the environment's
	// profile and keel's fixed dark background, so every pane follows the same colours as keel's own styles.
	lipgloss.SetColorProfile(profile)
	lipgloss.SetHasDarkBackground(true)
	app := tui.New(tui.Options{Session: s, Jobs: jobs, Styles: tui.NewStyles(profile), Keys: cfg.Keys, Mouse: cfg.Mouse, Tint: cfg.Tint})
	progOpts := []tea.ProgramOption{tea.WithOutput(stdout)}
	if !*noAlt {
		progOpts = append(progOpts, tea.WithAltScreen())
	}
	p = tea.NewProgram(app, progOpts...)
	_, err = p.Run()
	if info := s.Info(); info.Recording != "" {
		fmt.Fprintf(stderr, "recorded to %s\n", info.Recording)
	}
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

// stdinIsTerminal decides between the TUI and the plain line REPL for `keel chat`.
func stdinIsTerminal() bool { return term.IsTerminal(os.Stdin.Fd()) }
