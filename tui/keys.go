package tui

import "github.com/charmbracelet/bubbles/key"

// KeyMap is every key binding of the workbench, declared once; help renders it.
type KeyMap struct {
	Send       key.Binding
	Newline    key.Binding
	Interrupt  key.Binding
	Escape     key.Binding
	Help       key.Binding
	ToggleCap  key.Binding
	ToggleStr  key.Binding
	LayerUp    key.Binding
	LayerDown  key.Binding
	Jobs       key.Binding
	Mouse      key.Binding
	ScrollUp   key.Binding
	ScrollDown key.Binding
	Redraw     key.Binding
	Quit       key.Binding
	PlotMode   key.Binding
	PanBack    key.Binding
	PanFwd     key.Binding
	// Replay mode
	PlayPause key.Binding
	Faster    key.Binding
	Slower    key.Binding
	StepFwd   key.Binding
}

// DefaultKeyMap is keel's bindings.
func DefaultKeyMap() KeyMap {
	return KeyMap{
		Send:       key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "send")),
		Newline:    key.NewBinding(key.WithKeys("alt+enter", "ctrl+j"), key.WithHelp("alt+enter", "new line")),
		Interrupt:  key.NewBinding(key.WithKeys("ctrl+c"), key.WithHelp("ctrl+c", "stop / quit (twice)")),
		Quit:       key.NewBinding(key.WithKeys("ctrl+d"), key.WithHelp("ctrl+d", "quit (empty input)")),
		Escape:     key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "stop / close")),
		Help:       key.NewBinding(key.WithKeys("?"), key.WithHelp("?", "help (empty input)")),
		ToggleCap:  key.NewBinding(key.WithKeys("ctrl+k"), key.WithHelp("ctrl+k", "capping on/off")),
		ToggleStr:  key.NewBinding(key.WithKeys("ctrl+t"), key.WithHelp("ctrl+t", "steering on/off")),
		LayerUp:    key.NewBinding(key.WithKeys("ctrl+up"), key.WithHelp("ctrl+↑", "plot a deeper layer")),
		LayerDown:  key.NewBinding(key.WithKeys("ctrl+down"), key.WithHelp("ctrl+↓", "plot a shallower layer")),
		Jobs:       key.NewBinding(key.WithKeys("ctrl+o"), key.WithHelp("ctrl+o", "jobs pane")),
		Mouse:      key.NewBinding(key.WithKeys("f2"), key.WithHelp("f2", "mouse on/off")),
		ScrollUp:   key.NewBinding(key.WithKeys("pgup"), key.WithHelp("pgup", "scroll up")),
		ScrollDown: key.NewBinding(key.WithKeys("pgdown"), key.WithHelp("pgdn", "scroll down")),
		Redraw:     key.NewBinding(key.WithKeys("ctrl+l"), key.WithHelp("ctrl+l", "redraw (/clear forgets the chat)")),
		PlotMode:   key.NewBinding(key.WithKeys("f3"), key.WithHelp("f3", "plot tokens / replies")),
		PanBack:    key.NewBinding(key.WithKeys("ctrl+left"), key.WithHelp("ctrl+←", "plot earlier tokens")),
		PanFwd:     key.NewBinding(key.WithKeys("ctrl+right"), key.WithHelp("ctrl+→", "plot later tokens")),
		PlayPause:  key.NewBinding(key.WithKeys(" "), key.WithHelp("space", "play/pause")),
		Faster:     key.NewBinding(key.WithKeys("+", "="), key.WithHelp("+", "faster")),
		Slower:     key.NewBinding(key.WithKeys("-"), key.WithHelp("-", "slower")),
		StepFwd:    key.NewBinding(key.WithKeys("right", "l"), key.WithHelp("→", "step")),
	}
}

// ShortHelp is the one-line help.
func (k KeyMap) ShortHelp() []key.Binding {
	return []key.Binding{k.Send, k.Interrupt, k.ToggleCap, k.ToggleStr, k.Jobs, k.Help}
}

// FullHelp is the help overlay's columns.
func (k KeyMap) FullHelp() [][]key.Binding {
	return [][]key.Binding{
		{k.Send, k.Newline, k.Interrupt, k.Quit, k.Escape, k.Redraw, k.Help},
		{k.ToggleCap, k.ToggleStr, k.LayerUp, k.LayerDown, k.PlotMode, k.PanBack, k.PanFwd},
		{k.Jobs, k.Mouse, k.ScrollUp, k.ScrollDown, k.PlayPause},
	}
}
