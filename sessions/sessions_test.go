package sessions_test

import (
	"context"
	"flag"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/model/modeltest"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/workbench"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func stories(t testing.TB) *model.LM { return modeltest.Stories(t) }

func unit(d int, seed uint64) []float32 { return modeltest.Unit(d, seed) }

// record makes a three-turn session on stories260K with projections on four layers and a cap on one.
func record(t *testing.T, lm *model.LM, path string) *workbench.Recording {
	axis := map[int][]float32{}
	for l := 1; l <= 4; l++ {
		axis[l] = unit(lm.HiddenSize(), uint64(l))
	}
	rec, err := sessions.Create(path, sessions.Header{Keel: "test", Model: "stories260K", Axis: "random", Layers: []int{1, 2, 3, 4}, Term: sessions.Term{Cols: 60, Rows: 12}})
	if err != nil {
		t.Fatal(err)
	}
	r := &workbench.Recording{Rec: rec, Axis: axis}
	caps := []model.Intervention{{Layer: 2, Kind: model.Cap, Vectors: [][]float32{axis[2]}, Tau: 0}}
	if err := r.Say("user", "Tell me a story."); err != nil {
		t.Fatal(err)
	}
	ctx := lm.Tokenizer.Encode("Once upon a time", true)
	if _, err := r.Generate(context.Background(), exactly(lm, 40), ctx, caps, workbench.Sampling{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Mark("good"); err != nil {
		t.Fatal(err)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestReprojectionReproducesRecordedProjections(t *testing.T) {
	lm := stories(t)
	path := filepath.Join(t.TempDir(), "s.jsonl")
	r := record(t, lm, path)
	s, err := sessions.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sessions.Reproject(lm.Model, s, r.Axis, s.Header.Layers)
	if err != nil {
		t.Fatal(err)
	}
	turns := s.Turns()
	maxDiff, n := 0.0, 0
	ti := 0
	for _, turn := range turns {
		if len(turn.Start.Context) == 0 {
			continue
		}
		for k, tok := range turn.Tokens {
			for i := range s.Header.Layers {
				maxDiff = math.Max(maxDiff, math.Abs(float64(tok.Proj[i]-got[ti][k][i])))
				n++
			}
		}
		ti++
	}
	t.Logf("%d projections re-computed, max |diff| %.2g", n, maxDiff)
	if n == 0 || maxDiff > 1e-4 {
		t.Fatalf("re-projection differs by %g over %d values", maxDiff, n)
	}
}

// recorded is a freshly recorded session (record's), loaded back, with its model, folder and path.
func recorded(t *testing.T) (*model.LM, string, string, *sessions.Session) {
	lm := stories(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "s.jsonl")
	record(t, lm, path)
	s, err := sessions.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return lm, dir, path, s
}

func TestExportsAndDataset(t *testing.T) {
	lm, dir, _, s := recorded(t)
	// A cast holds the frames it is given (the workbench draws them; tui's tests check those).
	draw := func(*sessions.Session) ([]sessions.Frame, error) {
		return []sessions.Frame{{T: 0, Screen: "one"}, {T: 0.5, Screen: "two\nlines"}}, nil
	}
	for _, f := range []string{"cast", "transcript", "csv", "png"} {
		out := filepath.Join(dir, "out."+f)
		if err := s.Export(f, out, sessions.ExportOptions{Frames: draw}); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		st, err := os.Stat(out)
		if err != nil || st.Size() == 0 {
			t.Fatalf("%s: empty export", f)
		}
	}
	cast, _ := os.ReadFile(filepath.Join(dir, "out.cast"))
	if lines := strings.Split(strings.TrimSpace(string(cast)), "\n"); len(lines) != 3 || !strings.Contains(lines[0], `"version":3`) ||
		!strings.Contains(lines[0], `"cols":60`) || lines[2] != `[0.5,"o","\u001b[H\u001b[2Jtwo\r\nlines"]` {
		t.Fatalf("cast: %q", lines)
	}
	ds := s.Dataset(nil)
	if len(ds) != 1 || ds[0].Reward != 1 || ds[0].Label != "good" || len(ds[0].Messages) != 2 {
		t.Fatalf("dataset: %+v", ds)
	}
	// An automatic label takes the turns nobody marked, never a marked one: a second reply, left unmarked.
	path2 := filepath.Join(dir, "two.jsonl")
	rec, err := sessions.Create(path2, sessions.Header{Keel: "test", Model: "stories260K", Term: sessions.Term{Cols: 60, Rows: 12}})
	if err != nil {
		t.Fatal(err)
	}
	r := &workbench.Recording{Rec: rec}
	for i, prompt := range []string{"Once upon a time", "One day"} {
		if err := r.Say("user", "Tell me a story."); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Generate(context.Background(), exactly(lm, 12), lm.Tokenizer.Encode(prompt, true), nil, workbench.Sampling{}, nil); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			r.Mark("good")
		}
	}
	rec.Close()
	two, err := sessions.Load(path2)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	ds = two.Dataset(func(text string) (string, float64, bool) { seen = append(seen, text); return "drifted", 0, true })
	if len(ds) != 2 || ds[0].Label != "good" || ds[0].Reward != 1 || ds[1].Label != "drifted" || ds[1].Reward != 0 || len(seen) != 1 || len(ds[1].Messages) != 4 {
		t.Fatalf("with an automatic label: %+v (unmarked turns seen: %q)", ds, seen)
	}
	if len(two.Dataset(nil)) != 1 {
		t.Fatal("without an automatic label an unmarked turn was exported")
	}
}

func TestTruncatedAndCorruptFiles(t *testing.T) {
	lm := stories(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "s.jsonl")
	record(t, lm, path)
	raw, _ := os.ReadFile(path)
	full, _ := sessions.Parse(raw)
	// Cut inside the last token line of the generated turn, as a kill mid-write would: the completed user turn
	// survives, the turn in flight is dropped, the torn line is reported.
	end := strings.Index(string(raw), `{"type":"turn_end","t":`)
	end = strings.Index(string(raw[end+1:]), `{"type":"turn_end"`) + end + 1
	torn, err := sessions.Parse(raw[:end-15])
	if err != nil || len(torn.Warnings) != 1 || len(torn.Turns()) != len(full.Turns())-1 {
		t.Fatalf("torn last line: %v, warnings %v, turns %d of %d", err, torn.Warnings, len(torn.Turns()), len(full.Turns()))
	}
	lines := strings.Split(string(raw), "\n")
	lines[3] = "{garbage"
	if _, err := sessions.Parse([]byte(strings.Join(lines, "\n"))); err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("corrupt middle line: %v", err)
	}
	v2 := strings.Replace(string(raw), `"schema":1`, `"schema":2`, 1)
	if _, err := sessions.Parse([]byte(v2)); err == nil || !strings.Contains(err.Error(), "schema version 2") {
		t.Fatalf("schema mismatch: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"type":"header","schema":1,"layers":[1]}` + "\n" + `{"type":"token","turn":1,"proj":[0.5]}` + "\n"))
	f.Add([]byte(`{"type":"header","schema":1}` + "\n" + `{"type":"turn_start","turn":1}` + "\n" + `{"type":"turn_end","turn":1}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, err := sessions.Parse(raw)
		if err != nil {
			return
		}
		s.Turns()
		s.Log()
		s.Transcript()
		s.Dataset(nil)
		// Every export of a parsed session ends without a panic, in memory bounded by the header's sizes.
		s.WriteCSV(io.Discard)
	})
}

// An export never destroys: a failed one leaves the file at --out as it was, and the session itself is refused as
// the destination.
func TestExportKeepsWhatIsThere(t *testing.T) {
	_, dir, path, s := recorded(t)
	before, _ := os.ReadFile(path)
	if err := s.Export("csv", path, sessions.ExportOptions{}); err == nil || !strings.Contains(err.Error(), "is the session being exported") {
		t.Fatalf("export onto the session: %v", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("the session file changed")
	}
	out := filepath.Join(dir, "plot.png")
	os.WriteFile(out, []byte("a good file"), 0o644)
	s.Header.Layers = nil // nothing to plot: the PNG export fails
	if err := s.Export("png", out, sessions.ExportOptions{}); err == nil {
		t.Fatal("a PNG of a session without projections was written")
	}
	if got, _ := os.ReadFile(out); string(got) != "a good file" {
		t.Fatalf("a failed export left %q where a good file was", got)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".plot.png.tmp*")); len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
}

// A header claiming an absurd terminal is replayed at 80x24 with a warning, not allocated.
func TestAbsurdTerminalInHeader(t *testing.T) {
	raw := `{"type":"header","schema":1,"keel":"x","model":"m","layers":[],"term":{"cols":1000000000,"rows":1000000000}}
{"type":"turn_start","t":0,"turn":1,"role":"user"}
{"type":"turn_end","t":0.1,"turn":1,"role":"user","text":"hi"}
`
	s, err := sessions.Parse([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if s.Header.Term != (sessions.Term{Cols: 80, Rows: 24}) || len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "80x24") {
		t.Fatalf("term %+v, warnings %q", s.Header.Term, s.Warnings)
	}
}

// exactly generates n tokens greedily whatever comes: no end-of-sequence token ends the turn early.
func exactly(lm *model.LM, n int) workbench.Generator {
	return func(c context.Context, ids []int, hooks *model.Hooks, _ workbench.Sampling, onText func(string, model.Step) error) (string, error) {
		g := model.GenerateConfig{MaxTokens: n, EOS: []int{-1}, Hooks: hooks}
		res, err := lm.GenerateText(c, [][]int{ids}, model.TextConfig{GenerateConfig: g, OnText: onText})
		if err != nil {
			return "", err
		}
		return res[0].Text, nil
	}
}
