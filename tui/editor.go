package tui

import (
	"strings"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"
	"github.com/rivo/uniseg"
)

// editor is the message input: a multi-line buffer whose every key costs time bounded by the box it draws (its
// width times its height), never by the message's length, so a long typed message stays as cheap per key as a
// short one (a wrapping text area re-wraps the whole message on every key: quadratic in its length). Rows wrap at
// the box's width; the box shows the rows around the cursor.
type editor struct {
	lines    [][]rune // the logical lines (the message is them joined by '\n')
	row, col int      // the cursor: line, and rune index within it
	size     int      // runes held, each '\n' counted
	limit    int      // runes at most (0: no bound); what a key would add past it is dropped
	width    int      // cells of a row, the prompt included
	height   int      // rows drawn
	top      position // the first drawn row's start: always a row start of its line
	newline  key.Binding
	prompt   string
	hint     string // drawn, dimmed, while the buffer is empty
	st       Styles
	// dropped is set when a key's text did not all fit under limit (the front end says so once).
	dropped bool
	scanned int // runes laid out so far: the work a key costs, which tests hold to the box's size
}

// position is a place in the buffer: a line and a rune index within it.
type position struct{ line, idx int }

func (p position) before(q position) bool {
	return p.line < q.line || p.line == q.line && p.idx < q.idx
}

func newEditor(st Styles, newline key.Binding) *editor {
	return &editor{lines: [][]rune{nil}, width: 80, height: 2, newline: newline, prompt: "> ", hint: "Type a message, or /help", st: st}
}

// Value is the message as typed.
func (e *editor) Value() string {
	var b strings.Builder
	b.Grow(e.size)
	for i, l := range e.lines {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(string(l))
	}
	return b.String()
}

// Empty reports whether nothing is typed.
func (e *editor) Empty() bool { return e.size == 0 }

// Reset empties the buffer.
func (e *editor) Reset() {
	e.lines, e.row, e.col, e.size, e.top = [][]rune{nil}, 0, 0, 0, position{}
}

// SetValue replaces the buffer, the cursor at its end.
func (e *editor) SetValue(s string) {
	e.Reset()
	e.insert([]rune(s))
}

// SetWidth sets the box's width in cells (the prompt included).
func (e *editor) SetWidth(w int) {
	e.width = max(w, len(e.prompt)+2)
	e.top = e.rowStart(e.cursor())
}

func (e *editor) cursor() position { return position{e.row, e.col} }

// textWidth is the cells of a row's text: the box less the prompt and one cell for a cursor after a full row.
func (e *editor) textWidth() int { return max(1, e.width-len(e.prompt)-1) }

// rowEnd is the end of the row that starts at p (exclusive): runes are taken while they fit the row's width.
func (e *editor) rowEnd(p position) int {
	line, w, i := e.lines[p.line], 0, p.idx
	for ; i < len(line); i++ {
		e.scanned++
		rw := runeCells(line[i])
		if w+rw > e.textWidth() && i > p.idx {
			break
		}
		w += rw
	}
	return i
}

// rowStart is the start of the row holding p, laid out from the start of p's line (time linear in p.idx: only
// when the view moves back or an edit reaches before its top).
func (e *editor) rowStart(p position) position {
	start := position{p.line, 0}
	for {
		end := e.rowEnd(start)
		if p.idx < end || end >= len(e.lines[p.line]) {
			return start
		}
		start.idx = end
	}
}

func runeCells(r rune) int {
	if r < 0x7f && r >= 0x20 || r == '\t' {
		return 1
	}
	return max(0, uniseg.StringWidth(string(r)))
}

// insert puts runes at the cursor ('\r\n' and '\r' are newlines; other control characters but '\t' are dropped),
// up to the limit.
func (e *editor) insert(rs []rune) {
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		if r == '\r' {
			if i+1 < len(rs) && rs[i+1] == '\n' {
				continue
			}
			r = '\n'
		}
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f {
			continue
		}
		if e.limit > 0 && e.size >= e.limit {
			e.dropped = true
			return
		}
		e.size++
		if r == '\n' {
			rest := append([]rune(nil), e.lines[e.row][e.col:]...)
			e.lines[e.row] = e.lines[e.row][:e.col]
			e.lines = append(e.lines, nil)
			copy(e.lines[e.row+2:], e.lines[e.row+1:])
			e.lines[e.row+1] = rest
			e.row, e.col = e.row+1, 0
			continue
		}
		l := e.lines[e.row]
		if e.col == len(l) {
			l = append(l, r)
		} else {
			l = append(l[:e.col+1], l[e.col:]...)
			l[e.col] = r
		}
		e.lines[e.row] = l
		e.col++
	}
}

// deleteBefore removes n runes before the cursor within its line, or joins the line to the one above at its start.
func (e *editor) deleteBefore(n int) {
	if e.col == 0 {
		if e.row == 0 {
			return
		}
		prev := e.lines[e.row-1]
		e.col = len(prev)
		e.lines[e.row-1] = append(prev, e.lines[e.row]...)
		e.lines = append(e.lines[:e.row], e.lines[e.row+1:]...)
		e.row--
		e.size--
		return
	}
	n = min(n, e.col)
	l := e.lines[e.row]
	e.lines[e.row] = append(l[:e.col-n], l[e.col:]...)
	e.col -= n
	e.size -= n
}

// wordBefore is how many runes ctrl+w removes: the spaces before the cursor and the word before them.
func (e *editor) wordBefore() int {
	l, i := e.lines[e.row], e.col
	for i > 0 && (l[i-1] == ' ' || l[i-1] == '\t') {
		i--
	}
	for i > 0 && l[i-1] != ' ' && l[i-1] != '\t' {
		i--
	}
	return max(1, e.col-i)
}

// Update applies a key; it reports whether the editor used it.
func (e *editor) Update(msg tea.KeyMsg) bool {
	lineStart := e.cursor().line
	switch {
	case key.Matches(msg, e.newline):
		e.insert([]rune{'\n'})
	case msg.Type == tea.KeyRunes || msg.Type == tea.KeySpace:
		e.insert(msg.Runes)
	case msg.Type == tea.KeyTab:
		e.insert([]rune{'\t'})
	case msg.Type == tea.KeyBackspace || msg.Type == tea.KeyCtrlH:
		e.deleteBefore(1)
	case msg.Type == tea.KeyCtrlW:
		e.deleteBefore(e.wordBefore())
	case msg.Type == tea.KeyCtrlU:
		e.deleteBefore(max(1, e.col))
	case msg.Type == tea.KeyDelete:
		if e.col < len(e.lines[e.row]) || e.row+1 < len(e.lines) {
			e.moveRight()
			e.deleteBefore(1)
		}
	case msg.Type == tea.KeyLeft || msg.Type == tea.KeyCtrlB:
		e.moveLeft()
	case msg.Type == tea.KeyRight || msg.Type == tea.KeyCtrlF:
		e.moveRight()
	case msg.Type == tea.KeyUp && e.row > 0:
		e.row, e.col = e.row-1, min(e.col, len(e.lines[e.row-1]))
	case msg.Type == tea.KeyDown && e.row+1 < len(e.lines):
		e.row, e.col = e.row+1, min(e.col, len(e.lines[e.row+1]))
	case msg.Type == tea.KeyHome || msg.Type == tea.KeyCtrlA:
		e.col = 0
	case msg.Type == tea.KeyEnd || msg.Type == tea.KeyCtrlE:
		e.col = len(e.lines[e.row])
	default:
		return false
	}
	// The top stays a row start while nothing before it changed: an edit or a move before it, or lines joined
	// or split at or above it, lays the cursor's row out afresh.
	if c := e.cursor(); c.before(e.top) || lineStart != c.line && min(lineStart, c.line) <= e.top.line || e.top.line >= len(e.lines) {
		e.top = e.rowStart(c)
	}
	return true
}

func (e *editor) moveLeft() {
	if e.col > 0 {
		e.col--
	} else if e.row > 0 {
		e.row, e.col = e.row-1, len(e.lines[e.row-1])
	}
}

func (e *editor) moveRight() {
	if e.col < len(e.lines[e.row]) {
		e.col++
	} else if e.row+1 < len(e.lines) {
		e.row, e.col = e.row+1, 0
	}
}

// next is the start of the row after the one starting at p (ok false past the buffer's end).
func (e *editor) next(p position) (position, bool) {
	if end := e.rowEnd(p); end < len(e.lines[p.line]) {
		return position{p.line, end}, true
	}
	if p.line+1 < len(e.lines) {
		return position{p.line + 1, 0}, true
	}
	return p, false
}

// scroll moves the top down, a row at a time, until the cursor's row is drawn.
func (e *editor) scroll() {
	c := e.cursor()
	for {
		rows, p := []position{e.top}, e.top
		for len(rows) < e.height {
			n, ok := e.next(p)
			if !ok {
				break
			}
			rows, p = append(rows, n), n
		}
		last := rows[len(rows)-1]
		if c.line < last.line || c.line == last.line && (c.idx < e.rowEnd(last) || e.rowEnd(last) == len(e.lines[last.line])) {
			return
		}
		n, ok := e.next(e.top)
		if !ok {
			return
		}
		e.top = n
	}
}

// View draws the box: height rows, each with the prompt, the cursor in reverse video.
func (e *editor) View() string {
	e.scroll()
	prompt := e.st.User.Render(e.prompt)
	cur := e.st.r.NewStyle().Reverse(true)
	rows := make([]string, 0, e.height)
	if e.size == 0 {
		hint := []rune(e.hint)
		if len(hint) > e.textWidth() {
			hint = hint[:e.textWidth()]
		}
		rows = append(rows, prompt+cur.Render(string(hint[:1]))+e.st.Dim.Render(string(hint[1:])))
	} else {
		p, more := e.top, true
		for len(rows) < e.height && more {
			end, line := e.rowEnd(p), e.lines[p.line]
			text := string(line[p.idx:end])
			if p.line == e.row && e.col >= p.idx && (e.col < end || e.col == end && end == len(line)) {
				at := e.col - p.idx
				under := " "
				if e.col < end {
					under = string(line[e.col])
				}
				rest := ""
				if e.col < end {
					rest = string(line[e.col+1 : end])
				}
				text = string(line[p.idx:p.idx+at]) + cur.Render(under) + rest
			}
			rows = append(rows, prompt+strings.ReplaceAll(text, "\t", " "))
			p, more = e.next(p)
		}
	}
	for len(rows) < e.height {
		rows = append(rows, prompt)
	}
	for i, r := range rows {
		rows[i] = r + strings.Repeat(" ", max(0, e.width-ansi.StringWidth(r)))
	}
	return strings.Join(rows, "\n")
}
