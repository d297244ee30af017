package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/muesli/termenv"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/steer"
	"github.com/keel-lab/keel/tui"
	"github.com/keel-lab/keel/workbench"
)

// runSessions: keel sessions list | show FILE | export FILE --format F --out PATH | reproject FILE --axis A |
// export-dataset FILE... --out PATH
func runSessions(sub string, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	dir := fs.String("dir", sessions.DefaultDir(), "sessions folder")
	format := fs.String("format", "transcript", "export format: cast, transcript, csv or png")
	out := fs.String("out", "", "output path")
	axisPath := fs.String("axis", "", "reproject: the axis file to project onto")
	ignoreHash := fs.Bool("ignore-hash", false, "reproject: accept an axis made for other weights of the same shape")
	layersFlag := fs.String("layers", "", "reproject: layers (default: every layer of the axis); export --format png: the layers to plot (default: the plotted one)")
	tolerance := fs.Float64("tolerance", 1e-4, "verify: the difference allowed a recorded number (absolute, relative above 1)")
	asJSON := fs.Bool("json", false, "verify: print one JSON object of the figures")
	styleLabels := fs.Bool("style", true, "export-dataset: label unmarked assistant turns with the persona style scorer (a role's register: drifted, reward 0; the Assistant's: reward 1)")
	var mf cli.ModelFlags
	mf.Register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	load := func() (*sessions.Session, error) {
		if fs.NArg() < 1 {
			return nil, cli.Usagef("give the session file")
		}
		s, err := sessions.Load(sessionPath(fs.Arg(0), *dir))
		if err != nil {
			return nil, err
		}
		for _, w := range s.Warnings {
			fmt.Fprintf(stderr, "keel sessions: %s: %s\n", fs.Arg(0), w)
		}
		return s, nil
	}
	switch sub {
	case "list":
		files, err := sessions.List(*dir)
		if err != nil {
			return err
		}
		if len(files) == 0 {
			fmt.Fprintf(stdout, "no sessions in %s\n", *dir)
		}
		for _, f := range files {
			s, err := sessions.Load(f)
			if err != nil {
				fmt.Fprintf(stdout, "%s\t(unreadable: %v)\n", f, err)
				continue
			}
			fmt.Fprintf(stdout, "%s\t%s\t%d turns\t%s\n", f, s.Header.Created.Format("2006-01-02 15:04"), len(s.Turns()), s.Header.Model)
		}
		return nil
	case "show":
		s, err := load()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "model %s, axis %s, layers %v, %d events\n", s.Header.Model, s.Header.Axis, s.Header.Layers, len(s.Events))
		fmt.Fprintf(stdout, "sampling at the start: temperature %g, top-p %g, seed %d (each change is a line below)\n", s.Header.Sampling.Temperature, s.Header.Sampling.TopP, s.Header.Seed)
		for _, line := range s.Log() {
			fmt.Fprintln(stdout, line)
		}
		return nil
	case "export":
		s, err := load()
		if err != nil {
			return err
		}
		if *out == "" {
			return cli.Usagef("--out PATH is required")
		}
		// A cast holds the workbench's own frames (chat with tint, plot, controls), in 256 colours.
		opt := sessions.ExportOptions{Frames: func(s *sessions.Session) ([]sessions.Frame, error) {
			return tui.FramesEvery(s, tui.NewStyles(termenv.ANSI256), 0, 0, castInterval)
		}}
		if *layersFlag != "" {
			var err error
			if opt.Layers, err = cli.ParseLayers(*layersFlag); err != nil {
				return cli.UsageError{Err: err}
			}
		}
		if err := s.Export(*format, *out, opt); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", *out)
		return nil
	case "export-dataset":
		if fs.NArg() == 0 || *out == "" {
			return cli.Usagef("usage: keel sessions export-dataset FILE... --out DATA.jsonl")
		}
		var auto sessions.AutoLabel
		if *styleLabels {
			p, err := probes.LoadPersonas()
			if err != nil {
				return err
			}
			sc := probes.NewScorer(p)
			// The persona style scorer reads the reply's register: a role's register is drift (reward 0), the
			// Assistant's is kept (1); a reply showing neither is left out.
			auto = func(text string) (string, float64, bool) {
				switch {
				case sc.Drifted(text):
					return "drifted", 0, true
				case sc.AssistantLike(text):
					return "assistant", 1, true
				}
				return "", 0, false
			}
		}
		var data bytes.Buffer
		enc := json.NewEncoder(&data)
		n := 0
		for _, p := range fs.Args() {
			s, err := sessions.Load(p)
			if err != nil {
				return err
			}
			for _, r := range s.Dataset(auto) {
				if err := enc.Encode(r); err != nil {
					return err
				}
				n++
			}
		}
		if err := atomicfile.WriteFile(*out, data.Bytes()); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %d labelled turns to %s\n", n, *out)
		return nil
	case "reproject":
		s, err := load()
		if err != nil {
			return err
		}
		if *axisPath == "" {
			return cli.Usagef("--axis FILE is required")
		}
		if mf.Dir == "" {
			mf.Dir = s.Header.Model
		}
		_, lm, err := mf.Load()
		if err != nil {
			return err
		}
		defer lm.Close()
		axis, err := loadAxisFor(*axisPath, lm, *ignoreHash)
		if err != nil {
			return err
		}
		layers := axis.LayerList()
		if *layersFlag != "" {
			if layers, err = cli.ParseLayers(*layersFlag); err != nil {
				return cli.UsageError{Err: err}
			}
		}
		got, err := sessions.Reproject(lm.Model, s, axis.Layers, layers)
		if err != nil {
			return err
		}
		res := map[string]any{"session": s.Path, "axis": *axisPath, "layers": layers, "turns": got}
		if *out != "" {
			raw, err := json.Marshal(res)
			if err != nil {
				return err
			}
			return atomicfile.WriteFile(*out, append(raw, '\n'))
		}
		return json.NewEncoder(stdout).Encode(res)
	case "verify":
		s, err := load()
		if err != nil {
			return err
		}
		return verifySession(s, &mf, *axisPath, *ignoreHash, *tolerance, *asJSON, stdout)
	}
	return cli.Usagef("unknown sessions command %q", sub)
}

// loadAxisFor reads a vector file and checks it fits the loaded model: its shape always, its weights (or the
// weights the model was fine-tuned from) unless ignoreHash.
func loadAxisFor(path string, lm *model.LM, ignoreHash bool) (*steer.VectorFile, error) {
	a, err := steer.LoadVectorFile(path)
	if err != nil {
		return nil, err
	}
	w, err := steer.IdentifyWeights(lm.Dir)
	if err != nil {
		return nil, err
	}
	_, err = a.Fit(path, lm.NumLayers(), lm.HiddenSize(), w, ignoreHash)
	return a, err
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// sessionPath is a session named by path, or by its bare name (with or without .jsonl) in the sessions folder, as
// `keel sessions list` shows them.
func sessionPath(name, dir string) string {
	if _, err := os.Stat(name); err == nil || strings.ContainsRune(name, os.PathSeparator) {
		return name
	}
	for _, p := range []string{filepath.Join(dir, name), filepath.Join(dir, name+".jsonl")} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return name
}

// verifySession runs a recording's generated turns again on its model (the header's, unless --model) and axis
// (the header's, unless --axis), teacher-forced, and reports whether every recorded projection and cap move
// comes back: the model's weights must be the recorded ones.
func verifySession(s *sessions.Session, mf *cli.ModelFlags, axisPath string, ignoreHash bool, tol float64, asJSON bool, stdout io.Writer) error {
	if mf.Dir == "" {
		mf.Dir = s.Header.Model
	}
	if s.Header.ModelSHA256 != "" {
		sha, err := steer.WeightsSHA256(mf.Dir)
		if err != nil {
			return err
		}
		if sha != s.Header.ModelSHA256 {
			return fmt.Errorf("%s: its weights (sha256 %s) are not the recorded ones (%s): give the recorded model with --model", mf.Dir, sha[:12], s.Header.ModelSHA256[:12])
		}
	}
	if axisPath == "" {
		axisPath = s.Header.Axis
	}
	if axisPath == "" {
		return fmt.Errorf("the recording names no axis: nothing was projected, nothing to verify")
	}
	_, lm, err := mf.Load()
	if err != nil {
		return err
	}
	defer lm.Close()
	axis, err := loadAxisFor(axisPath, lm, ignoreHash)
	if err != nil {
		return err
	}
	rep, err := workbench.Verify(context.Background(), lm, axis.Layers, s, tol)
	if err != nil {
		return err
	}
	if asJSON {
		if err := json.NewEncoder(stdout).Encode(map[string]any{"turns": rep.Turns, "tokens": rep.Tokens, "unknown": rep.Unknown,
			"max_projection_difference": rep.MaxProj, "max_cap_move_difference": rep.MaxCap, "mismatches": rep.Mismatches, "ok": rep.OK()}); err != nil {
			return err
		}
	} else {
		for _, m := range rep.Mismatches {
			fmt.Fprintln(stdout, m)
		}
		fmt.Fprintf(stdout, "%d turns, %d tokens run again: max |difference| %.3g in a projection, %.3g in a cap move (tolerance %g)\n", rep.Turns, rep.Tokens, rep.MaxProj, rep.MaxCap, tol)
	}
	switch {
	case rep.Unknown > 0:
		return fmt.Errorf("%d tokens name no interventions list (a recording made before lists were numbered): they cannot be verified", rep.Unknown)
	case !rep.OK():
		return fmt.Errorf("the recording does not verify: %d numbers differ beyond %g", len(rep.Mismatches), tol)
	}
	if !asJSON {
		fmt.Fprintln(stdout, "verified")
	}
	return nil
}

// castInterval is the frame interval of a cast export: 10 frames a second of session time (a reply streams as
// words appear to a reader; every token is still in the workbench's own /replay).
const castInterval = 1.0 / 10
