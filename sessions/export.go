package sessions

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/keel-lab/keel/internal/atomicfile"
)

// Frame is one screen of a replayed session, as the workbench drew it, and when (seconds from the start).
type Frame struct {
	T      float64
	Screen string
}

// WriteCast writes an asciinema v3 recording of the session's frames (each frame redraws the screen).
func (s *Session) WriteCast(w io.Writer, frames []Frame) error {
	h := map[string]any{"version": 3, "term": map[string]int{"cols": s.Header.Term.Cols, "rows": s.Header.Term.Rows},
		"timestamp": s.Header.Created.Unix(), "title": "keel session " + s.Header.Model}
	if h["term"].(map[string]int)["cols"] == 0 {
		h["term"] = map[string]int{"cols": 80, "rows": 24}
	}
	enc := json.NewEncoder(w)
	if err := enc.Encode(h); err != nil {
		return err
	}
	prev := 0.0
	for _, f := range frames {
		screen := "\x1b[H\x1b[2J" + strings.ReplaceAll(f.Screen, "\n", "\r\n")
		if err := enc.Encode([]any{round6(f.T - prev), "o", screen}); err != nil {
			return err
		}
		prev = f.T
	}
	return nil
}

func round6(x float64) float64 {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'f', 6, 64), 64)
	return v
}

// TranscriptTurn is one turn of the transcript export, with the mean projection per layer over its tokens.
type TranscriptTurn struct {
	Turn        int                `json:"turn"`
	Role        string             `json:"role"`
	Content     string             `json:"content"`
	Projections map[string]float64 `json:"projections,omitempty"` // "layer_N" -> mean over the turn's tokens
	Labels      []string           `json:"labels,omitempty"`
}

// Transcript is the conversation with per-turn mean projections (the paper's transcript layout).
func (s *Session) Transcript() map[string]any {
	var turns []TranscriptTurn
	for _, t := range s.Turns() {
		tt := TranscriptTurn{Turn: t.Index, Role: t.Role, Content: t.Text, Labels: t.Labels}
		if t.Role == "assistant" && len(t.Tokens) > 0 {
			tt.Projections = map[string]float64{}
			for i, l := range s.Header.Layers {
				var sum float64
				n := 0
				for _, tok := range t.Tokens {
					if i < len(tok.Proj) {
						sum += float64(tok.Proj[i])
						n++
					}
				}
				if n > 0 {
					tt.Projections["layer_"+strconv.Itoa(l)] = sum / float64(n)
				}
			}
		}
		turns = append(turns, tt)
	}
	return map[string]any{"model": s.Header.Model, "axis": s.Header.Axis, "layers": s.Header.Layers, "turns": turns}
}

// WriteCSV writes one row per generated token: turn, index, id, piece, a column per layer, cap movements.
func (s *Session) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	head := []string{"turn", "index", "id", "piece"}
	for _, l := range s.Header.Layers {
		head = append(head, "layer_"+strconv.Itoa(l))
	}
	head = append(head, "cap_moves")
	cw.Write(head)
	for _, t := range s.Turns() {
		if t.Role != "assistant" {
			continue
		}
		for k, tok := range t.Tokens {
			row := []string{strconv.Itoa(t.Index), strconv.Itoa(k), strconv.Itoa(tok.ID), tok.Piece}
			for i := range s.Header.Layers {
				v := ""
				if i < len(tok.Proj) {
					v = strconv.FormatFloat(float64(tok.Proj[i]), 'g', -1, 32)
				}
				row = append(row, v)
			}
			var caps []string
			for _, c := range tok.Caps {
				caps = append(caps, strconv.FormatFloat(float64(c), 'g', -1, 32))
			}
			row = append(row, strings.Join(caps, ";"))
			cw.Write(row)
		}
	}
	cw.Flush()
	return cw.Error()
}

// WritePNG plots every generated token's projection at each recorded layer.
func (s *Session) WritePNG(path string) error {
	return atomicfile.Write(path, s.writePNG)
}

func (s *Session) writePNG(f *os.File) error {
	if len(s.Header.Layers) == 0 {
		return fmt.Errorf("the session recorded no projections (it was recorded without an axis)")
	}
	p := plot.New()
	p.Title.Text = "projection onto " + s.Header.Axis
	p.X.Label.Text = "generated token"
	p.Y.Label.Text = "<h, axis>"
	var args []any
	for i, l := range s.Header.Layers {
		var xy plotter.XYs
		n := 0
		for _, t := range s.Turns() {
			for _, tok := range t.Tokens {
				if t.Role == "assistant" && i < len(tok.Proj) {
					xy = append(xy, plotter.XY{X: float64(n), Y: float64(tok.Proj[i])})
					n++
				}
			}
		}
		if len(xy) > 0 {
			args = append(args, "layer "+strconv.Itoa(l), xy)
		}
	}
	if len(args) == 0 {
		return fmt.Errorf("the session has no generated tokens to plot")
	}
	if err := plotutil.AddLines(p, args...); err != nil {
		return err
	}
	w, err := p.WriterTo(10*vg.Inch, 4*vg.Inch, "png")
	if err != nil {
		return err
	}
	_, err = w.WriteTo(f)
	return err
}

// Export writes the session in format (cast, transcript, csv, png) to path, whole or not at all: a failed export
// leaves whatever was at path as it was, and the session's own file is never an export's destination. A cast
// holds the frames draw gives (the workbench's, drawn from the recording).
func (s *Session) Export(format, path string, draw func(*Session) ([]Frame, error)) error {
	if s.Path != "" {
		if a, err := os.Stat(s.Path); err == nil {
			if b, err := os.Stat(path); err == nil && os.SameFile(a, b) {
				return fmt.Errorf("--out %s is the session being exported: choose another file", path)
			}
		}
	}
	var write func(f *os.File) error
	switch format {
	case "png":
		write = s.writePNG
	case "cast":
		if draw == nil {
			return fmt.Errorf("a cast needs the workbench's frames: export it with keel sessions export")
		}
		frames, err := draw(s)
		if err != nil {
			return err
		}
		write = func(f *os.File) error { return s.WriteCast(f, frames) }
	case "transcript":
		write = func(f *os.File) error {
			enc := json.NewEncoder(f)
			enc.SetIndent("", "  ")
			return enc.Encode(s.Transcript())
		}
	case "csv":
		write = func(f *os.File) error { return s.WriteCSV(f) }
	default:
		return fmt.Errorf("unknown format %q: use cast, transcript, csv or png", format)
	}
	return atomicfile.Write(path, write)
}

// DatasetRecord is one line of `keel sessions export-dataset`: the conversation up to a labelled assistant
// turn, and a reward: 1 for a turn marked good, 0 for one marked bad; unmarked turns take the automatic label,
// when one is given.
type DatasetRecord struct {
	Messages []map[string]string `json:"messages"`
	Reward   float64             `json:"reward"`
	Label    string              `json:"label"` // "good", "bad", or the automatic label's name
	Session  string              `json:"session"`
	Turn     int                 `json:"turn"`
}

// AutoLabel labels an assistant turn nobody marked (nil: such turns are left out); ok false leaves it out too.
type AutoLabel func(text string) (label string, reward float64, ok bool)

// Dataset returns the labelled assistant turns, each with the conversation before it. A turn's own good or bad
// mark comes first; auto labels the rest.
func (s *Session) Dataset(auto AutoLabel) []DatasetRecord {
	var out []DatasetRecord
	var msgs []map[string]string
	for _, t := range s.Turns() {
		msgs = append(msgs, map[string]string{"role": t.Role, "content": t.Text})
		if t.Role != "assistant" {
			continue
		}
		label, reward, ok := "", 0.0, false
		for _, l := range t.Labels {
			if l == "good" || l == "bad" {
				label, ok = l, true
				if l == "good" {
					reward = 1
				}
				break
			}
		}
		if !ok && auto != nil {
			label, reward, ok = auto(t.Text)
		}
		if ok {
			out = append(out, DatasetRecord{Messages: append([]map[string]string(nil), msgs...), Reward: reward, Label: label, Session: s.Path, Turn: t.Index})
		}
	}
	return out
}
