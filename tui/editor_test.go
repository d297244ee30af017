package tui

import (
	"strings"
	"testing"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"
	"github.com/muesli/termenv"
)

func keyRunes(s string) tea.KeyMsg { return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)} }

// The input edits as a line editor does: typing, a new line, deleting back over a line break, ctrl+w, ctrl+u,
// moving; wide characters wrap at the box's width; the length bound drops what passes it and says so.
func TestEditorEdits(t *testing.T) {
	e := newEditor(NewStyles(termenv.Ascii), DefaultKeyMap().Newline)
	e.SetWidth(12)
	e.Update(keyRunes("hello world"))
	e.Update(tea.KeyMsg{Type: tea.KeyCtrlW})
	e.Update(keyRunes("there"))
	e.Update(tea.KeyMsg{Type: tea.KeyEnter, Alt: true})
	e.Update(keyRunes("二行目"))
	if got := e.Value(); got != "hello there\n二行目" {
		t.Fatalf("%q", got)
	}
	e.Update(tea.KeyMsg{Type: tea.KeyHome})
	e.Update(tea.KeyMsg{Type: tea.KeyBackspace})
	if got := e.Value(); got != "hello there二行目" {
		t.Fatalf("backspace at a line's start joins it to the one above: %q", got)
	}
	for _, row := range strings.Split(e.View(), "\n") {
		if w := ansi.StringWidth(row); w != 12 {
			t.Fatalf("row %q is %d cells, the box 12", row, w)
		}
	}
	e.Update(tea.KeyMsg{Type: tea.KeyCtrlU})
	if got := e.Value(); got != "二行目" {
		t.Fatalf("ctrl+u: %q", got)
	}
	e.Reset()
	e.limit = 5
	e.Update(keyRunes("abcdefgh"))
	if e.Value() != "abcde" || !e.dropped {
		t.Fatalf("the bound: %q, dropped %v", e.Value(), e.dropped)
	}
}

// A key costs work bounded by the box, not by the message: typing 40,000 characters lays out at most a few rows'
// worth of runes per key, at the end of the message as at its start, and so does moving back through it.
func TestEditorWorkPerKeyIsBoundedByTheBox(t *testing.T) {
	e := newEditor(NewStyles(termenv.Ascii), DefaultKeyMap().Newline)
	e.SetWidth(80)
	bound := 4 * e.height * e.width
	worst := 0
	for i := 0; i < 40000; i++ {
		before := e.scanned
		e.Update(keyRunes(string(rune('a' + i%26))))
		e.View()
		worst = max(worst, e.scanned-before)
	}
	if worst > bound {
		t.Fatalf("a typed key laid out %d runes (the box holds %d)", worst, e.height*e.width)
	}
	if len(e.Value()) != 40000 {
		t.Fatalf("%d characters kept", len(e.Value()))
	}
	total := e.scanned
	for i := 0; i < 200; i++ {
		e.Update(tea.KeyMsg{Type: tea.KeyLeft})
		e.View()
	}
	if per := (e.scanned - total) / 200; per > 40000/e.textWidth()+bound {
		t.Fatalf("moving left costs %d runes a key", per)
	}
}
