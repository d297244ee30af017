package sessions

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/charmbracelet/x/ansi"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/keel-lab/keel/internal/atomicfile"
)

// Frame is one screen of a replayed session, as the workbench drew it, and when (seconds from the start).
type Frame struct {
	T      float64
	Screen string
}

// WriteCast writes an asciinema v3 recording of the session's frames: the first whole, each later one as the rows
// that changed (moved to and rewritten, the rest of the row cleared), as a terminal program redraws; a frame
// that changes nothing is left out.
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
	var shown []string // the rows on screen
	for _, f := range frames {
		rows := strings.Split(f.Screen, "\n")
		var out strings.Builder
		if len(rows) != len(shown) {
			out.WriteString("\x1b[H\x1b[2J" + strings.Join(rows, "\r\n"))
		} else {
			for i, r := range rows {
				if r != shown[i] {
					k := unchangedPrefix(shown[i], r)
					fmt.Fprintf(&out, "\x1b[%d;%dH%s\x1b[K", i+1, ansi.StringWidth(r[:k])+1, r[k:])
				}
			}
		}
		shown = rows
		if out.Len() == 0 {
			continue
		}
		if err := enc.Encode([]any{round6(f.T - prev), "o", out.String()}); err != nil {
			return err
		}
		prev = f.T
	}
	return nil
}

// unchangedPrefix is how much of a row's new text, from its start, the old one already shows: the longest common
// prefix that ends outside an escape sequence, at a character's start, with no colour open (so the rest can be
// written from that column alone).
func unchangedPrefix(old, row string) int {
	safe, open, inEsc := 0, false, false
	for i := 0; i < len(old) && i < len(row) && old[i] == row[i]; i++ {
		c := row[i]
		switch {
		case inEsc:
			if c >= 0x40 && c <= 0x7e { // the sequence's final byte
				inEsc = false
				if c == 'm' {
					// an SGR: open unless it resets ("\x1b[m" or "\x1b[0m")
					j := strings.LastIndex(row[:i], "\x1b[")
					params := row[j+2 : i]
					open = params != "" && params != "0"
				}
			}
		case c == 0x1b:
			inEsc = true
		}
		if !inEsc && !open && i+1 < len(row) && utf8.RuneStart(row[i+1]) {
			safe = i + 1
		}
	}
	return safe
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
					if i < len(tok.Proj) && !tok.Special { // an end-of-turn token is no part of the reply's mean
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
	head = append(head, "cap_moves", "special")
	cw.Write(head)
	for _, t := range s.Turns() {
		if t.Role != "assistant" {
			continue
		}
		for k, tok := range t.Tokens {
			row := []string{strconv.Itoa(t.Index), strconv.Itoa(k), strconv.Itoa(tok.ID), tok.Piece}
			for i := range s.Header.Layers {
				v := ""
				if i < len(tok.Proj) && !tok.Special { // named apart in the last column, never plotted
					v = strconv.FormatFloat(float64(tok.Proj[i]), 'g', -1, 32)
				}
				row = append(row, v)
			}
			var caps []string
			for _, c := range tok.Caps {
				caps = append(caps, strconv.FormatFloat(float64(c), 'g', -1, 32))
			}
			special := ""
			if tok.Special {
				special = "1"
			}
			row = append(row, strings.Join(caps, ";"), special)
			cw.Write(row)
		}
	}
	cw.Flush()
	return cw.Error()
}

// PlotLines are the lines the workbench's plot draws at its plotted layer, recorded in every controls event so
// that exports and replays draw them as the chat did.
type PlotLines struct {
	Layer     int      `json:"layer"`
	DriftLine *float64 `json:"drift_line,omitempty"` // absent when unknown
	Assistant *float64 `json:"assistant,omitempty"`
	Tau       *float64 `json:"tau,omitempty"` // absent when capping is off or not at this layer
}

// ControlsEvent names the recorded controls events (their value holds PlotLines and the controls in force).
const ControlsEvent = "controls"

// plotLines is the PlotLines of a controls event (ok false for any other event).
func plotLines(e Event) (PlotLines, bool) {
	var pl PlotLines
	if e.Type != Control || e.Name != ControlsEvent || json.Unmarshal(e.Value, &pl) != nil {
		return pl, false
	}
	return pl, true
}

// PlottedLayer is the layer the chat last plotted (from its controls events), else the middle recorded layer.
func (s *Session) PlottedLayer() (int, bool) {
	layer, ok := 0, false
	for _, e := range s.Events {
		if pl, isLines := plotLines(e); isLines {
			layer, ok = pl.Layer, true
		}
	}
	if !ok && len(s.Header.Layers) > 0 {
		return s.Header.Layers[len(s.Header.Layers)/2], true
	}
	return layer, ok
}

// pngColors are the layers' colours, far apart on the wheel.
var pngColors = []color.RGBA{{31, 119, 180, 255}, {214, 39, 40, 255}, {44, 160, 44, 255}, {148, 103, 189, 255},
	{255, 127, 14, 255}, {23, 190, 207, 255}, {140, 86, 75, 255}, {227, 119, 194, 255}}

// WritePNG plots the generated tokens' projections at the given layers (none: the plotted layer), with a
// dotted line at each reply's start and the drift line and tau as the chat had them at each token.
func (s *Session) WritePNG(path string, layers []int) error {
	return atomicfile.Write(path, func(f *os.File) error { return s.writePNG(f, layers) })
}

// pngData is what the PNG draws: each layer's token projections, the drift line and tau where the chat had
// them at the plotted layer, and where each reply starts (x is the generated token's index).
type pngData struct {
	layers      []int
	series      []plotter.XYs
	drift, tau  plotter.XYs
	replyStarts []float64
}

func (s *Session) pngData(layers []int) (*pngData, error) {
	if len(s.Header.Layers) == 0 {
		return nil, fmt.Errorf("the session recorded no projections (it was recorded without an axis)")
	}
	if len(layers) == 0 {
		l, _ := s.PlottedLayer()
		layers = []int{l}
	}
	at := map[int]int{} // layer -> its place in a token's projections
	for i, l := range s.Header.Layers {
		at[l] = i
	}
	for _, l := range layers {
		if _, ok := at[l]; !ok {
			return nil, fmt.Errorf("--layers %d: the session recorded layers %v", l, s.Header.Layers)
		}
	}
	d := &pngData{layers: layers, series: make([]plotter.XYs, len(layers))}
	var lines PlotLines
	x, inReply := 0.0, false
	for _, e := range s.Events {
		if pl, ok := plotLines(e); ok {
			lines = pl
		}
		switch {
		case e.Type == TurnStart:
			inReply = e.Role == "assistant"
			if inReply {
				d.replyStarts = append(d.replyStarts, x)
			}
		case e.Type == Token && inReply && !e.Special:
			for i, l := range layers {
				if k := at[l]; k < len(e.Proj) {
					d.series[i] = append(d.series[i], plotter.XY{X: x, Y: float64(e.Proj[k])})
				}
			}
			if len(layers) == 1 && lines.Layer == layers[0] {
				if lines.DriftLine != nil {
					d.drift = append(d.drift, plotter.XY{X: x, Y: *lines.DriftLine})
				}
				if lines.Tau != nil {
					d.tau = append(d.tau, plotter.XY{X: x, Y: *lines.Tau})
				}
			}
			x++
		}
	}
	if x == 0 {
		return nil, fmt.Errorf("the session has no generated tokens to plot")
	}
	return d, nil
}

func (s *Session) writePNG(f *os.File, layers []int) error {
	d, err := s.pngData(layers)
	if err != nil {
		return err
	}
	layers, series, drift, tau, starts := d.layers, d.series, d.drift, d.tau, d.replyStarts
	p := plot.New()
	p.Title.Text = "projection onto the axis " + ShortPath(s.Header.Axis)
	p.X.Label.Text = "generated token"
	p.Y.Label.Text = "<h, axis>"
	legend := plot.NewLegend()
	for i, xy := range series {
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		l.Color, l.Width = pngColors[i%len(pngColors)], vg.Points(1.2)
		p.Add(l)
		legend.Add("layer "+strconv.Itoa(layers[i]), l)
	}
	for _, ref := range []struct {
		name string
		xy   plotter.XYs
		c    color.RGBA
	}{{"drift line", drift, color.RGBA{120, 120, 120, 255}}, {"tau (cap floor)", tau, color.RGBA{200, 0, 0, 255}}} {
		if len(ref.xy) == 0 {
			continue
		}
		l, err := plotter.NewScatter(ref.xy)
		if err != nil {
			return err
		}
		l.GlyphStyle.Color, l.GlyphStyle.Radius = ref.c, vg.Points(0.8)
		p.Add(l)
		legend.Add(ref.name, l)
	}
	// A dotted line where each reply begins, over the height of everything drawn.
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, xy := range append(append(series, drift), tau) {
		for _, pt := range xy {
			lo, hi = math.Min(lo, pt.Y), math.Max(hi, pt.Y)
		}
	}
	for _, x0 := range starts {
		v, err := plotter.NewLine(plotter.XYs{{X: x0, Y: lo}, {X: x0, Y: hi}})
		if err != nil {
			return err
		}
		v.Color, v.Dashes = color.RGBA{190, 190, 190, 255}, []vg.Length{vg.Points(1), vg.Points(3)}
		p.Add(v)
	}
	return WritePlotPNG(f, p, legend, 10*vg.Inch, 4*vg.Inch)
}

// legendWidth is the column at the right of a PNG where its legend goes, beside the data, never over it.
const legendWidth = 1.6 * vg.Inch

// WritePlotPNG draws a plot with its legend in a column of its own at the right, and writes the PNG.
func WritePlotPNG(w io.Writer, p *plot.Plot, legend plot.Legend, width, height vg.Length) error {
	img := vgimg.New(width, height)
	dc := draw.New(img)
	p.Draw(draw.Crop(dc, 0, -legendWidth, 0, 0))
	legend.Top, legend.Left = true, true
	legend.Draw(draw.Crop(dc, width-legendWidth+vg.Points(8), 0, 0, -vg.Points(24)))
	_, err := vgimg.PngCanvas{Canvas: img}.WriteTo(w)
	return err
}

// ShortPath names a file by its last two elements ("persona/axis.safetensors"): a title, not a location.
func ShortPath(path string) string {
	if path == "" {
		return "(none)"
	}
	return filepath.Join(filepath.Base(filepath.Dir(path)), filepath.Base(path))
}

// ExportOptions are what some formats need besides the session.
type ExportOptions struct {
	Frames func(*Session) ([]Frame, error) // cast: draws the frames
	Layers []int                           // png: the layers to plot (none: the plotted layer)
}

// Export writes the session in format (cast, transcript, csv, png) to path, whole or not at all: a failed export
// leaves whatever was at path as it was, and the session's own file is never an export's destination. A cast
// holds the frames opt.Frames draws (the workbench's, from the recording); a png plots opt.Layers.
func (s *Session) Export(format, path string, opt ExportOptions) error {
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
		write = func(f *os.File) error { return s.writePNG(f, opt.Layers) }
	case "cast":
		if opt.Frames == nil {
			return fmt.Errorf("a cast needs the workbench's frames: export it with keel sessions export")
		}
		frames, err := opt.Frames(s)
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
