package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/steer"
)

// progressBar draws one line per update: a bar, the count, the item just finished and the time left.
func progressBar(w io.Writer, what string) func(done, total int, item string, eta time.Duration) {
	return func(done, total int, item string, eta time.Duration) {
		const width = 30
		n := done * width / max(1, total)
		fmt.Fprintf(w, "%s [%s%s] %d/%d %-16s ETA %s\n", what, strings.Repeat("#", n), strings.Repeat(".", width-n), done, total, item, eta.Round(time.Second))
	}
}

func runAxisExtract(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	cfg := probes.DefaultExtract()
	var mf cli.ModelFlags
	mf.Register(fs)
	var roles string
	var limit int
	extractFlags(fs, &cfg, &roles, &limit)
	out := fs.String("out", "", "extraction folder (resumable: a rerun skips finished roles)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	var pf providerFlags
	pf.register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return cli.Usagef("give --out DIR")
	}
	p, err := probes.LoadPersonas()
	if err != nil {
		return err
	}
	cfg.Roles = cli.SplitList(roles)
	cfg.Roles = limitRoles(p, cfg.Roles, limit)
	if err := cfg.Check(p); err != nil {
		return cli.UsageError{Err: err}
	}
	ctx, lm, done, err := mf.LoadForRun()
	if err != nil {
		return err
	}
	defer done()
	x := &probes.Extractor{Ctx: ctx, LM: lm, Personas: p, Config: cfg, Dir: *out, Progress: progressBar(stderr, "extract")}
	defer pf.close()
	if err := pf.clients(x); err != nil {
		return err
	}
	res, _, err := probes.ExtractAxisFolder(x)
	if err != nil {
		if st := x.Stats; st.Unparsed > 0 {
			err = fmt.Errorf("%w (the judge's answers held no score 0-3 in %d of %d: they are in %s)", err, st.Unparsed, st.Judged, filepath.Join(*out, "provider-answers.jsonl"))
		}
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(struct {
			*probes.AxisResult
			Run probes.ExtractStats `json:"run"`
		}{res, x.Stats})
	}
	printAxisReport(stdout, res, *out)
	printExtractStats(stdout, x)
	return nil
}

func printAxisReport(w io.Writer, res *probes.AxisResult, dir string) {
	fmt.Fprintf(w, "%s: axis of %d layers x %d from %d roles (%d skipped with too few score-3 rollouts)\n", dir, res.Layers, res.DModel, len(res.Roles), len(res.Skipped))
	fmt.Fprintln(w, "layer  cos(PC1,axis)  PC1..PC3 variance   PCs for 70%  avg norm")
	for l := 0; l < res.Layers; l++ {
		ev := res.ExplainedVariance[l]
		mark := ""
		if l == res.Middle {
			mark = "  <- middle"
		}
		fmt.Fprintf(w, "%5d  %13.3f  %.2f %.2f %.2f     %11d  %8.2f%s\n", l, res.PC1AxisCosine[l], at(ev, 0), at(ev, 1), at(ev, 2), res.ComponentsFor70[l], res.AvgNorm[l], mark)
	}
	kinds := res.KindLoadings()
	var names []string
	for k := range kinds {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return kinds[names[i]] > kinds[names[j]] })
	fmt.Fprint(w, "mean PC1 loading by kind (Assistant side positive):")
	for _, k := range names {
		fmt.Fprintf(w, " %s %.2f", k, kinds[k])
	}
	fmt.Fprintln(w)
	n := len(res.Loadings)
	show := func(ls []probes.RoleLoading) string {
		var s []string
		for _, l := range ls {
			s = append(s, fmt.Sprintf("%s %.2f", l.Role, l.Loading))
		}
		return strings.Join(s, ", ")
	}
	fmt.Fprintf(w, "Assistant end of PC1: %s\n", show(res.Loadings[:min(6, n)]))
	fmt.Fprintf(w, "far end of PC1:       %s\n", show(res.Loadings[max(0, n-6):]))
}

func at(xs []float64, i int) float64 {
	if i < len(xs) {
		return xs[i]
	}
	return math.NaN()
}

func runAxisCalibrate(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	dir := fs.String("dir", "", "an extraction folder (keel axis extract --out)")
	asJSON := fs.Bool("json", false, "print the calibration as JSON")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return cli.Usagef("give --dir DIR, an extraction folder")
	}
	axis, acts, _, err := probes.LoadExtraction(*dir)
	if err != nil {
		return err
	}
	cal, ids, err := probes.CalibrateFolder(*dir, axis, acts)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(cal)
	}
	fmt.Fprintf(stdout, "%d rollouts; role-ward percentiles of the per-rollout mean projection (role-ward = -axis):\n", cal.Rollouts)
	fmt.Fprintln(stdout, "layer       p1      p25      p50      p75   avg norm")
	for l, m := range cal.RoleWard {
		fmt.Fprintf(stdout, "%5d %8.3f %8.3f %8.3f %8.3f %10.2f\n", l, m["p1"], m["p25"], m["p50"], m["p75"], axis.AvgNorm[l])
	}
	fmt.Fprintf(stdout, "wrote %s and %d capping configs in %s (%s ... %s)\n", filepath.Join(*dir, "calibration.json"), len(ids), filepath.Join(*dir, "caps"), ids[0], ids[len(ids)-1])
	return nil
}

func runAxisInfo(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return cli.Usagef("usage: keel axis info FILE")
	}
	a, err := steer.LoadVectorFile(fs.Arg(0))
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(a.Header)
}
