package main

import (
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"github.com/charmbracelet/x/ansi"
	"github.com/guptarohit/asciigraph"
	"github.com/muesli/termenv"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/steer"
	"github.com/keel-lab/keel/tui"
)

// runDrift: keel drift [--axis FILE|DIR] [--model DIR] [--cap FILE] [--domains ...] [--csv FILE] [--png FILE] [--json]
func runDrift(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	cfg := probes.DefaultDrift()
	var mf cli.ModelFlags
	mf.Register(fs)
	axisPath := fs.String("axis", "", "the axis: a file or an extraction folder (keel axis extract --out DIR); default: the model's own axis/ (the embedded model has one)")
	capPath := fs.String("cap", "", "a capping config to hold the conversations under (DIR/caps/<id>.safetensors)")
	ignoreHash := fs.Bool("ignore-hash", false, "accept vector files made for other weights of the same shape")
	domains := fs.String("domains", "coding,writing,therapy,philosophy", "comma-separated domains")
	fs.IntVar(&cfg.Conversations, "conversations", cfg.Conversations, "conversations per domain")
	fs.IntVar(&cfg.Turns, "turns", cfg.Turns, "turns per conversation (1-10; up to 30 with --user)")
	fs.IntVar(&cfg.Layer, "layer", cfg.Layer, "analysis layer (-1: the middle one)")
	fs.IntVar(&cfg.MinConversations, "min-conversations", cfg.MinConversations, "leave out turn positions fewer conversations reach")
	fs.IntVar(&cfg.MaxTokens, "max-tokens", cfg.MaxTokens, "tokens per reply")
	fs.IntVar(&cfg.BatchSize, "batch", cfg.BatchSize, "replies generated together")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed")
	csvPath := fs.String("csv", "", "write domain,turn,projection,drift_rate,conversations rows here")
	pngPath := fs.String("png", "", "plot the curves into this PNG")
	asJSON := fs.Bool("json", false, "print the curves as JSON")
	fs.StringVar(&cfg.User, "user", "", "a server whose model plays the user, URL#MODEL (its key from $KEEL_PROVIDER_KEY or $KEEL_PROVIDER_KEY_FILE); default: the domains' scripted turns")
	work := fs.String("work", "", "folder that keeps the --user server's answers, so a rerun asks nothing twice (default: keel's cache folder)")
	var pf providerFlags
	pf.register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	cfg.Domains = cli.SplitList(*domains)
	if err := cfg.Check(); err != nil {
		return cli.UsageError{Err: err}
	}
	ctx, lm, done, err := mf.LoadForRun()
	if err != nil {
		return err
	}
	defer done()
	if *axisPath = cli.AxisPath(*axisPath); *axisPath == "" {
		if *axisPath = probes.ModelAxisDir(lm.Dir); *axisPath == "" {
			return cli.Usagef("%s has no axis/ folder: give --axis FILE or DIR (keel axis extract writes one)", lm.Dir)
		}
	}
	if st, err := os.Stat(*axisPath); err == nil && st.IsDir() {
		*axisPath = filepath.Join(*axisPath, "axis.safetensors")
	}
	axis, err := loadAxisFor(*axisPath, lm, *ignoreHash)
	if err != nil {
		return err
	}
	var hooks *model.Hooks
	if *capPath != "" {
		c, err := loadAxisFor(*capPath, lm, *ignoreHash)
		if err != nil {
			return err
		}
		if c.Operation != steer.OpCap {
			return cli.Usagef("%s: a %q file, not a capping config", *capPath, c.Operation)
		}
		hooks = model.NewHooks(c.Caps()...)
	}
	p, err := probes.LoadPersonas()
	if err != nil {
		return err
	}
	defer pf.close()
	users, err := pf.users(cfg.User, *work, cfg.MaxTokens, cfg.Temperature, cfg.Seed)
	if err != nil {
		return err
	}
	curves, err := probes.MeasureDrift(ctx, lm, p, axis, hooks, cfg, users)
	if err != nil {
		return err
	}
	if *csvPath != "" {
		if err := writeDriftCSV(*csvPath, curves); err != nil {
			return err
		}
	}
	if *pngPath != "" {
		if err := writeDriftPNG(*pngPath, curves); err != nil {
			return err
		}
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(jsonCurves(curves))
	}
	fmt.Fprintln(stdout, driftChart(curves, colourOn(stdout)))
	fmt.Fprintln(stdout, "turn  "+fmt.Sprint(rangeN(cfg.Turns)))
	for _, c := range curves {
		fmt.Fprintf(stdout, "%-10s projection %s\n%-10s drifted    %s\n", c.Domain, cells(c.Projection, "%6.2f"), "", cells(c.DriftRate, "%6.2f"))
	}
	return nil
}

func rangeN(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i + 1
	}
	return out
}

func cells(xs []float64, f string) string {
	s := ""
	for _, x := range xs {
		if math.IsNaN(x) {
			s += "     -"
		} else {
			s += fmt.Sprintf(f, x)
		}
	}
	return s
}

// jsonCurves replaces the NaN of left-out turn positions with null.
func jsonCurves(curves []probes.DriftCurve) []map[string]any {
	var out []map[string]any
	for _, c := range curves {
		proj := make([]any, len(c.Projection))
		for i, x := range c.Projection {
			if !math.IsNaN(x) {
				proj[i] = x
			}
		}
		out = append(out, map[string]any{"domain": c.Domain, "projection": proj, "drift_rate": c.DriftRate, "conversations": c.N})
	}
	return out
}

// driftChart draws every domain's mean projection per turn in one ASCII chart, each line named at its right end
// (told apart without colour); colour only on a terminal.
func driftChart(curves []probes.DriftCurve, colour bool) string {
	var data [][]float64
	var names []string
	for _, c := range curves {
		var ys []float64
		for _, y := range c.Projection {
			if !math.IsNaN(y) {
				ys = append(ys, y)
			}
		}
		if len(ys) > 0 {
			data = append(data, ys)
			names = append(names, c.Domain)
		}
	}
	if len(data) == 0 {
		return "(no turn position reached by enough conversations to plot)"
	}
	opts := []asciigraph.Option{asciigraph.Height(12), asciigraph.Width(48),
		asciigraph.Caption("mean projection on the Assistant Axis per turn (higher: more Assistant-like)")}
	if !colour {
		// asciigraph resets colours even when it sets none; its legend's marks would all look alike
		return tui.LabelLineEnds(ansi.Strip(asciigraph.PlotMany(data, opts...)), data, names, 12)
	}
	opts = append(opts, asciigraph.SeriesLegends(names...), asciigraph.SeriesColors(domainColours(names)...))
	return tui.LabelLineEnds(asciigraph.PlotMany(data, opts...), data, names, 12)
}

func writeDriftCSV(path string, curves []probes.DriftCurve) error {
	return atomicfile.Write(path, func(f *os.File) error { return writeDriftRows(f, curves) })
}

func writeDriftRows(f *os.File, curves []probes.DriftCurve) error {
	w := csv.NewWriter(f)
	w.Write([]string{"domain", "turn", "projection", "drift_rate", "conversations"})
	for _, c := range curves {
		for t := range c.Projection {
			proj := ""
			if !math.IsNaN(c.Projection[t]) {
				proj = strconv.FormatFloat(c.Projection[t], 'g', 6, 64)
			}
			w.Write([]string{c.Domain, strconv.Itoa(t + 1), proj, strconv.FormatFloat(c.DriftRate[t], 'g', 6, 64), strconv.Itoa(c.N[t])})
		}
	}
	w.Flush()
	return w.Error()
}

func writeDriftPNG(path string, curves []probes.DriftCurve) error {
	p := plot.New()
	p.Title.Text = "Drift along the Assistant Axis"
	p.X.Label.Text = "turn"
	p.Y.Label.Text = "mean projection of the reply"
	legend := plot.NewLegend()
	drawn := 0
	for _, c := range curves {
		var xy plotter.XYs
		for t, y := range c.Projection {
			if !math.IsNaN(y) {
				xy = append(xy, plotter.XY{X: float64(t + 1), Y: y})
			}
		}
		if len(xy) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		_, rgba := domainColour(c.Domain)
		l.Color, pts.Color = rgba, rgba
		p.Add(l, pts)
		legend.Add(c.Domain, l, pts)
		drawn++
	}
	if drawn == 0 {
		return fmt.Errorf("%s: no turn position reached by enough conversations to plot", path)
	}
	return atomicfile.Write(path, func(f *os.File) error { return sessions.WritePlotPNG(f, p, legend, 8*vg.Inch, 4*vg.Inch) })
}

// colourOn reports whether w is a terminal whose environment asks for colour (the workbench's rule,
// tui.ProfileFromEnv): a file or a pipe gets plain text.
func colourOn(w io.Writer) bool {
	return isTerminalWriter(w) && tui.ProfileFromEnv(os.Getenv) != termenv.Ascii
}

// domainColour is a drift domain's one colour, in the terminal and in the PNG alike.
func domainColour(domain string) (asciigraph.AnsiColor, color.RGBA) {
	switch domain {
	case "coding":
		return asciigraph.Blue, color.RGBA{31, 119, 180, 255}
	case "writing":
		return asciigraph.Green, color.RGBA{44, 160, 44, 255}
	case "therapy":
		return asciigraph.Red, color.RGBA{214, 39, 40, 255}
	case "philosophy":
		return asciigraph.Goldenrod, color.RGBA{218, 165, 32, 255}
	}
	return asciigraph.Gray, color.RGBA{127, 127, 127, 255}
}

func domainColours(names []string) []asciigraph.AnsiColor {
	out := make([]asciigraph.AnsiColor, len(names))
	for i, n := range names {
		out[i], _ = domainColour(n)
	}
	return out
}
