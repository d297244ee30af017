package tui

import (
	"fmt"
	"math"
	"strings"

	"github.com/charmbracelet/x/ansi"
	"github.com/guptarohit/asciigraph"
)

// renderPlot draws the assistant tokens' projections at the analysis layer (the latest that fit), the mean of
// each turn, the cap line tau and the drift threshold.
func (a *App) renderPlot() string {
	w := a.width - 10
	if a.wide() {
		w = a.sideWidth() - 10
	}
	h := 8
	if a.wide() {
		h = max(4, min(14, a.bodyHeight()-len(strings.Split(a.controlsPane, "\n"))-a.jobsHeight()-4))
	}
	layer := a.session.Controls().Layer
	title := a.st.Title.Render(fmt.Sprintf(" Assistant Axis, layer %d ", layer))
	if a.session.Info().Axis == "" {
		return title + "\n" + a.st.Dim.Render("(no axis loaded)")
	}
	var proj, means []float64
	for _, t := range a.session.Turns() {
		if t.Role != "assistant" {
			continue
		}
		start := len(proj)
		var sum float64
		n := 0
		for _, tok := range t.Tokens {
			if tok.HasProj {
				proj = append(proj, tok.Proj)
				sum += tok.Proj
				n++
			}
		}
		for i := start; i < len(proj); i++ {
			means = append(means, sum/float64(n))
		}
	}
	if len(proj) < 2 {
		return title + "\n" + a.st.Dim.Render("(projections appear as the model replies)")
	}
	if len(proj) > w {
		proj, means = proj[len(proj)-w:], means[len(means)-w:]
	}
	series := [][]float64{proj, means}
	legends := []string{"token", "turn"}
	colors := []asciigraph.AnsiColor{asciigraph.DodgerBlue, asciigraph.Orange}
	flat := func(v float64) []float64 {
		out := make([]float64, len(proj))
		for i := range out {
			out[i] = v
		}
		return out
	}
	if tau := a.session.Tau(layer); !math.IsNaN(tau) {
		series, legends, colors = append(series, flat(tau)), append(legends, "tau"), append(colors, asciigraph.Red)
	}
	if thr, _ := a.session.Scale(layer); !math.IsNaN(thr) {
		series, legends, colors = append(series, flat(thr)), append(legends, "drift"), append(colors, asciigraph.Gray)
	}
	opts := []asciigraph.Option{asciigraph.Height(h), asciigraph.Width(w), asciigraph.Precision(1), asciigraph.SeriesLegends(legends...)}
	if !a.st.plain {
		opts = append(opts, asciigraph.SeriesColors(colors...))
	}
	plot := asciigraph.PlotMany(series, opts...)
	if a.st.plain {
		plot = ansi.Strip(plot) // asciigraph resets colours even when it sets none
	}
	return title + "\n" + plot
}
