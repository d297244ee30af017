package tui

import (
	"math"
	"strings"
)

// LabelLineEnds writes each series' name at the right of the chart row its last point is drawn on, as
// asciigraph places points (the same scale over every series, height rows): lines told apart without colour,
// and two lines on one row named together ("tau, drift") instead of drawn as one.
func LabelLineEnds(chart string, series [][]float64, names []string, height int) string {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range series {
		for _, v := range s {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if math.IsInf(lo, 0) {
		return chart
	}
	ratio := 1.0
	if interval := math.Abs(hi - lo); interval != 0 {
		ratio = float64(height) / interval
	}
	round := func(x float64) float64 { return math.Round(x) }
	min2, max2 := int(round(lo*ratio)), int(round(hi*ratio))
	rows := max2 - min2
	byRow := map[int][]string{}
	for i, s := range series {
		if len(s) == 0 || i >= len(names) || names[i] == "" { // unnamed: it sets the scale only
			continue
		}
		row := rows - (int(round(s[len(s)-1]*ratio)) - min2)
		byRow[row] = append(byRow[row], names[i])
	}
	lines := strings.Split(chart, "\n")
	for row, ns := range byRow {
		if row >= 0 && row < len(lines) && row <= rows {
			lines[row] += " " + strings.Join(ns, ", ")
		}
	}
	return strings.Join(lines, "\n")
}
