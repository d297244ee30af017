package sessions

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Screen turns events into frames: the transcript wrapped to the terminal width (the rows that fit), and a
// status line with the last token's projection at each recorded layer. It is deterministic, so a recording
// replays to exactly the frames it was recorded with.
type Screen struct {
	Header Header
	lines  []string // finished transcript lines
	cur    strings.Builder
	role   string
	last   []float32
	caps   []float32
	status string
}

// NewScreen starts an empty screen for a session.
func NewScreen(h Header) *Screen {
	if h.Term.Cols <= 0 {
		h.Term.Cols = 80
	}
	if h.Term.Rows <= 0 {
		h.Term.Rows = 24
	}
	return &Screen{Header: h}
}

// Apply takes one event.
func (sc *Screen) Apply(e Event) {
	switch e.Type {
	case TurnStart:
		sc.role = e.Role
		sc.cur.Reset()
		if e.Text != "" {
			sc.cur.WriteString(e.Text)
		}
	case Token:
		sc.cur.WriteString(e.Piece)
		sc.last, sc.caps = e.Proj, e.Caps
	case TurnEnd:
		sc.lines = append(sc.lines, wrap(sc.role+": "+sc.cur.String(), sc.Header.Term.Cols)...)
		sc.role = ""
		sc.cur.Reset()
	case Control:
		sc.status = fmt.Sprintf("%s=%s", e.Name, string(e.Value))
	case Marker:
		sc.status = "marked " + e.Label
	case Job:
		sc.status = "job " + e.Name + " " + e.Label
	}
}

// View is the current frame.
func (sc *Screen) View() string {
	cols, rows := sc.Header.Term.Cols, sc.Header.Term.Rows
	body := max(rows-2, 0)
	var cur []string
	if sc.role != "" {
		cur = wrapTail(sc.role+": "+sc.cur.String(), cols, body)
	}
	done := sc.lines[max(len(sc.lines)-(body-len(cur)), 0):]
	lines := append(append([]string(nil), done...), cur...)
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	for i := len(lines); i < body; i++ {
		b.WriteByte('\n')
	}
	b.WriteString(strings.Repeat("─", cols))
	b.WriteByte('\n')
	var st strings.Builder
	for i, l := range sc.Header.Layers {
		if i < len(sc.last) {
			fmt.Fprintf(&st, "L%d %s ", l, signed2(sc.last[i]))
		}
	}
	for i, c := range sc.caps {
		if c != 0 {
			fmt.Fprintf(&st, "cap%d %s ", i, signed2(c))
		}
	}
	if sc.status != "" {
		st.WriteString("| " + sc.status)
	}
	b.WriteString(truncate(st.String(), cols))
	return b.String()
}

// signed2 prints v with a sign and two decimals, never "-0.00" (a value capped exactly at 0 may land on either
// side of it by rounding).
func signed2(v float32) string {
	r := math.Round(float64(v)*100) / 100
	if r == 0 {
		r = 0
	}
	return fmt.Sprintf("%+.2f", r)
}

func wrap(s string, cols int) []string {
	var out []string
	for _, para := range strings.Split(s, "\n") {
		out = append(out, chunk([]rune(para), cols)...)
	}
	return out
}

// chunk cuts a paragraph into lines of cols runes (the last may be shorter, or empty).
func chunk(r []rune, cols int) []string {
	var out []string
	for len(r) > cols {
		out = append(out, string(r[:cols]))
		r = r[cols:]
	}
	return append(out, string(r))
}

// wrapTail is the last n lines of wrap(s, cols), read from the end of s: a frame shows only those, and the turn
// being streamed grows by a token per frame.
func wrapTail(s string, cols, n int) []string {
	var rev []string
	for len(rev) < n {
		i := strings.LastIndexByte(s, '\n')
		lines := chunk([]rune(s[i+1:]), cols)
		for j := len(lines) - 1; j >= 0 && len(rev) < n; j-- {
			rev = append(rev, lines[j])
		}
		if i < 0 {
			break
		}
		s = s[:i]
	}
	slices.Reverse(rev)
	return rev
}

func truncate(s string, cols int) string {
	r := []rune(s)
	if len(r) > cols {
		return string(r[:cols])
	}
	return s
}

// Frames replays a whole session: the frame after every event.
func (s *Session) Frames() []string {
	sc := NewScreen(s.Header)
	frames := make([]string, 0, len(s.Events))
	for _, e := range s.Events {
		sc.Apply(e)
		frames = append(frames, sc.View())
	}
	return frames
}

// Player steps through a session's events: play, pause, speed, step, seek. The TUI's replay mode drives it.
type Player struct {
	s       *Session
	screen  *Screen
	pos     int // events applied
	Speed   float64
	playing bool
	clock   float64 // session time reached
}

// NewPlayer starts at the beginning, paused, at speed 1.
func NewPlayer(s *Session) *Player { return &Player{s: s, screen: NewScreen(s.Header), Speed: 1} }

// Play and Pause toggle advancing in Tick.
func (p *Player) Play()  { p.playing = true }
func (p *Player) Pause() { p.playing = false }

// Playing reports whether Tick advances.
func (p *Player) Playing() bool { return p.playing }

// Pos is the number of events applied; Len the total.
func (p *Player) Pos() int { return p.pos }
func (p *Player) Len() int { return len(p.s.Events) }

// Step applies the next event (false at the end).
func (p *Player) Step() bool {
	if p.pos >= len(p.s.Events) {
		return false
	}
	e := p.s.Events[p.pos]
	p.screen.Apply(e)
	p.clock = e.T
	p.pos++
	return true
}

// Seek rebuilds the screen at event i (0 = nothing applied).
func (p *Player) Seek(i int) {
	i = max(0, min(i, len(p.s.Events)))
	p.screen = NewScreen(p.s.Header)
	p.pos = 0
	for p.pos < i {
		p.Step()
	}
}

// Tick advances by wall time dt at the current speed while playing; it returns whether anything changed.
func (p *Player) Tick(dt time.Duration) bool {
	if !p.playing {
		return false
	}
	p.clock += dt.Seconds() * p.Speed
	changed := false
	for p.pos < len(p.s.Events) && p.s.Events[p.pos].T <= p.clock {
		p.Step()
		changed = true
	}
	if p.pos >= len(p.s.Events) {
		p.playing = false
	}
	return changed
}

// View is the frame at the current position.
func (p *Player) View() string { return p.screen.View() }
