package tui

import (
	"io"
	"math"
	"strings"

	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/textarea"
	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	"github.com/rivo/uniseg"

	"github.com/keel-lab/keel/workbench"
)

// Styles are the app's colours, made with a renderer of a fixed colour profile: keel never queries the terminal
// (a query over SSH through tmux can hang or print garbage), and NO_COLOR or TERM=dumb give plain text.
type Styles struct {
	Title, User, Assistant, Dim, Notice, Active, Rec, Cap, Threshold lipgloss.Style
	tints                                                            []lipgloss.Style // role-ward to Assistant-like
	plain                                                            bool
	r                                                                *lipgloss.Renderer
}

// help and textarea styles from keel's renderer: their defaults use adaptive colours, which query the
// terminal's background.
func (s Styles) helpStyles() help.Styles {
	key, desc := s.r.NewStyle().Foreground(lipgloss.Color("250")), s.Dim
	return help.Styles{Ellipsis: desc, ShortKey: key, ShortDesc: desc, ShortSeparator: desc, FullKey: key, FullDesc: desc, FullSeparator: desc}
}

func (s Styles) textareaStyle() textarea.Style {
	plain := s.r.NewStyle()
	return textarea.Style{Base: plain, CursorLine: plain, CursorLineNumber: s.Dim, EndOfBuffer: s.Dim, LineNumber: s.Dim,
		Placeholder: s.Dim, Prompt: s.User, Text: plain}
}

// ProfileFromEnv is the colour profile the environment asks for, without asking the terminal.
func ProfileFromEnv(environ func(string) string) termenv.Profile {
	switch {
	case environ("NO_COLOR") != "", environ("TERM") == "dumb":
		return termenv.Ascii
	case environ("COLORTERM") == "truecolor", environ("COLORTERM") == "24bit":
		return termenv.TrueColor
	case environ("TERM") == "":
		return termenv.Ascii
	}
	return termenv.ANSI256
}

// NewStyles makes the styles for a colour profile (256 colours are enough for every one of them).
func NewStyles(p termenv.Profile) Styles {
	r := lipgloss.NewRenderer(io.Discard)
	r.SetColorProfile(p)
	r.SetHasDarkBackground(true) // fixed: never queried
	c := func(code string) lipgloss.Style { return r.NewStyle().Foreground(lipgloss.Color(code)) }
	s := Styles{
		Title:     r.NewStyle().Bold(true).Reverse(true),
		User:      c("39").Bold(true),
		Assistant: c("214").Bold(true),
		Dim:       c("244"),
		Notice:    c("203"),
		Active:    c("42").Bold(true),
		Rec:       c("196"),
		Cap:       c("203"),
		Threshold: c("244"),
		plain:     p == termenv.Ascii,
		r:         r,
	}
	for _, code := range []string{"196", "208", "226", "117", "33"} {
		s.tints = append(s.tints, c(code))
	}
	if s.plain { // no attributes either: TERM=dumb shows escape sequences as text
		plain := r.NewStyle()
		s.Title, s.User, s.Assistant, s.Active = plain, plain, plain, plain
	}
	return s
}

// Tint colours a token by where its projection sits: red below the drift threshold, through yellow, to blue at
// the default Assistant's mean (thr, top); untinted when the scale is unknown or colours are off.
func (s Styles) Tint(t workbench.Token, thr, top float64) string {
	if s.plain || !t.HasProj || math.IsNaN(thr) || math.IsNaN(top) || top == thr {
		return t.Text
	}
	x := (t.Proj - thr) / (top - thr) // 0 at the threshold, 1 at the Assistant's mean
	i := int(math.Floor((x + 0.5) * 2))
	i = max(0, min(len(s.tints)-1, i))
	return s.tints[i].Render(t.Text)
}

// TintAll colours a reply token by token without ever splitting a grapheme cluster between two colours: a
// terminal draws a cluster (a ZWJ family, a flag, a skin tone) as one glyph whatever escape sequences sit inside
// it, and measured in pieces it would count wider than it is drawn, shifting every pane beside it. A cluster
// spread over several tokens takes the colour of the token it begins in.
func (s Styles) TintAll(toks []workbench.Token, thr, top float64) string {
	toks = append([]workbench.Token(nil), toks...)
	var full strings.Builder
	for i := range toks {
		toks[i].Text = terminalText(toks[i].Text)
		full.WriteString(toks[i].Text)
	}
	text := full.String()
	starts := map[int]bool{} // byte offsets where a cluster begins
	g := uniseg.NewGraphemes(text)
	for g.Next() {
		from, _ := g.Positions()
		starts[from] = true
	}
	var b strings.Builder
	var seg workbench.Token // the segment being built: its first token's projection, its text to a cluster start
	segStart, pos := 0, 0
	for i, t := range toks {
		if i == 0 || starts[pos] {
			if pos > segStart {
				seg.Text = text[segStart:pos]
				b.WriteString(s.Tint(seg, thr, top))
			}
			seg, segStart = t, pos
		}
		pos += len(t.Text)
	}
	if pos > segStart {
		seg.Text = text[segStart:pos]
		b.WriteString(s.Tint(seg, thr, top))
	}
	return b.String()
}
