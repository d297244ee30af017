package tui

import (
	tea "github.com/charmbracelet/bubbletea"

	"github.com/keel-lab/keel/workbench"
)

// runCommand answers a slash command through the session's table; the TUI only does what the result asks of a
// front end.
func (a *App) runCommand(line string) tea.Cmd {
	return a.result(a.session.Run(line))
}

// result shows a command's result: its line, its action, and its slow part run as a tea.Cmd.
func (a *App) result(res workbench.Result) tea.Cmd {
	a.notice = res.Notice
	var cmd tea.Cmd
	switch res.Action {
	case workbench.Quit:
		if a.generating {
			a.stop()
		}
		a.quitting = true
		return tea.Quit
	case workbench.ShowHelp:
		a.chat.commandList, a.notice = res.Notice, "esc closes the list"
	case workbench.ToggleTint:
		a.tint = !a.tint
		a.notice = "tint off"
		if a.tint {
			a.notice = "tint on: replies coloured by their projection (red below the drift line)"
		}
		a.noteErr(a.session.Note(tintNote, a.tint))
	case workbench.ToggleMouse:
		cmd = a.toggleMouse()
	case workbench.ToggleJobs:
		a.jobsView.open = !a.jobsView.open
		a.resize(a.width, a.height)
	case workbench.Replay:
		cmd = a.startReplay(res.Arg, nil)
	case workbench.PlotMode:
		a.plotView = plotModel{turns: res.Arg == "turns"}
		a.notice = "plotting the latest tokens (ctrl+←/→ pans)"
		if a.plotView.turns {
			a.notice = "plotting each reply's mean over the whole chat"
		}
	}
	if res.Slow != nil {
		slow := res.Slow
		cmd = tea.Batch(cmd, func() tea.Msg { return slowMsg{slow()} })
	}
	a.chat.invalidate() // the controls, the tint or the model changed what every turn looks like
	a.rerenderChat()
	return cmd
}
