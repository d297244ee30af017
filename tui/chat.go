package tui

import (
	"strings"

	"github.com/charmbracelet/bubbles/viewport"

	"github.com/keel-lab/keel/workbench"
)

// chatModel is the chat pane: the conversation drawn into a viewport, each finished turn drawn once per width.
type chatModel struct {
	viewport.Model
	rendered    []renderedTurn // per turn of the session, "" until drawn
	commandList string         // /help's list, shown instead of the chat until esc
}

// renderedTurn is a finished turn as drawn at a chat width (the chat redraws only the turn in flight).
type renderedTurn struct {
	text  string
	width int
}

func newChatModel() chatModel {
	c := chatModel{Model: viewport.New(80, 10)}
	c.KeyMap = viewport.KeyMap{} // the chat scrolls with pgup/pgdn only: every other key goes to the input
	return c
}

// invalidate drops every drawn turn (the width, the tint or the plotted layer changed how turns look).
func (c *chatModel) invalidate() { c.rendered = nil }

// draw lays the turns into the viewport, drawing only what changed; it follows the bottom while a reply streams
// or when it was there.
func (c *chatModel) draw(turns []workbench.Turn, generating bool, render func(*workbench.Turn) string) {
	if c.commandList != "" {
		c.SetContent(c.commandList)
		c.GotoTop()
		return
	}
	var b strings.Builder
	if len(c.rendered) > len(turns) { // the chat was cleared
		c.rendered = nil
	}
	for len(c.rendered) < len(turns) {
		c.rendered = append(c.rendered, renderedTurn{})
	}
	for i := range turns {
		t, r := &turns[i], &c.rendered[i]
		done := i < len(turns)-1 || !generating
		if done && r.text != "" && r.width == c.Width {
			b.WriteString(r.text)
			continue
		}
		text := render(t)
		if done {
			r.text, r.width = text, c.Width
		}
		b.WriteString(text)
	}
	atBottom := c.AtBottom()
	c.SetContent(b.String())
	if atBottom || generating {
		c.GotoBottom()
	}
}
