package tui

import (
	"fmt"
	"math"
	"strings"

	"github.com/charmbracelet/x/ansi"
	"github.com/guptarohit/asciigraph"

	"github.com/keel-lab/keel/workbench"
)

// renderPlot draws the plotted layer's projections: in token mode the reply tokens in a window that ends at the
// latest (or, panned, earlier) with each turn's mean; in turn mode each reply's mean over the whole chat, the
// latest marked. Both draw the drift line and the cap line tau, tau last so that it shows where they meet, and
// name both values in the legend.
// plotModel is the plot pane: the projections at the plotted layer, by token or by reply.
type plotModel struct {
	turns  bool // each reply's mean over the chat, not the latest tokens
	offset int  // tokens the token window ends before the latest
}

// view draws the pane for a session in a w-column, h-row chart.
func (m *plotModel) view(session *workbench.Session, st Styles, w, h int) string {
	layer := session.Controls().Layer
	mode := "tokens"
	if m.turns {
		mode = "replies"
	}
	title := st.Title.Render(fmt.Sprintf(" Assistant Axis, layer %d, %s ", layer, mode))
	if session.Info().Axis == "" {
		return title + "\n" + st.Dim.Render("(no axis loaded)")
	}
	captionW := w + 8
	w = max(8, w-len(" token, turn")) // room for the lines' names at their right ends
	var series [][]float64
	var legends []string
	var colors []asciigraph.AnsiColor
	var caption string
	var values []string
	if m.turns {
		means := session.TurnMeans()
		if len(means) == 0 {
			return title + "\n" + st.Dim.Render("(each reply's mean appears as the model replies)")
		}
		pts := means
		if len(pts) == 1 {
			pts = []float64{means[0], means[0]}
		}
		series, legends, colors = [][]float64{pts}, []string{"reply mean"}, []asciigraph.AnsiColor{asciigraph.Orange}
		caption = fmt.Sprintf("replies 1-%d; now: reply %d, mean %+.2f", len(means), len(means), means[len(means)-1])
	} else {
		proj, means := tokenSeries(session)
		if len(proj) < 2 {
			return title + "\n" + st.Dim.Render("(projections appear as the model replies)")
		}
		m.offset = min(m.offset, max(0, len(proj)-w))
		end := len(proj) - m.offset
		start := max(0, end-w)
		series = [][]float64{proj[start:end], means[start:end]}
		legends = []string{"token", "turn"}
		colors = []asciigraph.AnsiColor{asciigraph.DodgerBlue, asciigraph.Orange}
		if m.offset > 0 || start > 0 {
			caption = fmt.Sprintf("tokens %d-%d of %d", start+1, end, len(proj))
		}
	}
	// Replies the context policy let go are still plotted; the caption says which the model no longer reads.
	dropped := 0
	for _, t := range session.Turns() {
		if t.Role == "assistant" && t.Dropped {
			dropped++
		}
	}
	if dropped > 0 {
		caption = strings.TrimPrefix(caption+fmt.Sprintf("; replies 1-%d out of context", dropped), "; ")
	}
	n := len(series[0])
	flat := func(v float64) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = v
		}
		return out
	}
	var flatLines [][]float64 // the drift line and tau, named at their right ends (one row may hold both)
	var flatNames []string
	if thr, _ := session.Scale(layer); !math.IsNaN(thr) {
		series, legends, colors = append(series, flat(thr)), append(legends, "drift"), append(colors, asciigraph.Gray)
		values = append(values, fmt.Sprintf("drift line %+.2f", thr))
		flatLines, flatNames = append(flatLines, flat(thr)), append(flatNames, "drift")
	}
	if tau := session.Tau(layer); !math.IsNaN(tau) {
		series, legends, colors = append(series, flat(tau)), append(legends, "tau"), append(colors, asciigraph.Red)
		values = append(values, fmt.Sprintf("tau %+.2f", tau))
		flatLines, flatNames = append(flatLines, flat(tau)), append(flatNames, "tau")
	}
	opts := []asciigraph.Option{asciigraph.Height(h), asciigraph.Width(w), asciigraph.Precision(1)}
	if !st.plain {
		opts = append(opts, asciigraph.SeriesLegends(legends...), asciigraph.SeriesColors(colors...))
	}
	plot := asciigraph.PlotMany(series, opts...)
	if st.plain {
		plot = ansi.Strip(plot) // asciigraph resets colours even when it sets none
	}
	// Every line is named at its right end without colour (a legend's marks would all look alike); with colour,
	// the flat lines are, where one row may hold both.
	names := legends
	if !st.plain {
		names = append(make([]string, len(series)-len(flatLines)), flatNames...)
	}
	plot = LabelLineEnds(plot, series, names, h)
	// The lines' values in words: on one row of the chart the two lines are one line.
	for _, line := range []string{caption, strings.Join(values, " · ")} {
		if line != "" {
			plot += "\n" + st.Dim.Render(truncate(line, captionW))
		}
	}
	return title + "\n" + plot
}

// tokenSeries is every reply token's projection in the chat, and beside each its reply's mean.
func tokenSeries(session *workbench.Session) (proj, means []float64) {
	for _, t := range session.Turns() {
		if t.Role != "assistant" {
			continue
		}
		start := len(proj)
		var sum float64
		for _, tok := range t.Tokens {
			if tok.HasProj {
				proj = append(proj, tok.Proj)
				sum += tok.Proj
			}
		}
		for i := start; i < len(proj); i++ {
			means = append(means, sum/float64(len(proj)-start))
		}
	}
	return proj, means
}
