package tui

import (
	"strings"

	"github.com/charmbracelet/bubbles/viewport"
	"github.com/charmbracelet/x/ansi"

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
		c.SetContent(wrapHanging(c.commandList, c.Width))
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

// wrapHanging wraps each line of a list at width, its continuations indented under the line's text after its
// leading column (the command), so that nothing is cut at the pane's edge.
func wrapHanging(text string, width int) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if ansi.StringWidth(line) <= width || width < 20 {
			out = append(out, line)
			continue
		}
		// The hanging indent: where the description starts (after the first run of two or more spaces past the
		// command), or four columns when that leaves too little room.
		indent := 4
		if i := strings.Index(strings.TrimLeft(line, " "), "  "); i >= 0 {
			lead := len(line) - len(strings.TrimLeft(line, " "))
			rest := strings.TrimLeft(line[lead+i:], " ")
			if at := len(line) - len(rest); at < width/2 {
				indent = at
			}
		}
		cur := ""
		for _, w := range strings.Fields(line) {
			if cur == "" {
				cur = line[:len(line)-len(strings.TrimLeft(line, " "))] + w
				continue
			}
			if ansi.StringWidth(cur)+1+ansi.StringWidth(w) > width {
				out = append(out, cur)
				cur = strings.Repeat(" ", indent) + w
				continue
			}
			cur += " " + w
		}
		out = append(out, cur)
	}
	return strings.Join(out, "\n")
}
