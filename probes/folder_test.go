package probes

import (
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/steer"
)

func testFolder(t *testing.T) *AxisFolder {
	t.Helper()
	raw, def := map[int][]float32{}, map[int][]float32{}
	for l := 0; l < 4; l++ {
		raw[l] = []float32{float32(l + 1), 0, 0}
		def[l] = []float32{2, 1, 0}
	}
	axis, err := steer.NewVectorFile(steer.Header{Model: "m", AvgNorm: map[int]float64{1: 10}}, raw, 4)
	if err != nil {
		t.Fatal(err)
	}
	dv, err := steer.NewVectorFile(steer.Header{Model: "m", Operation: steer.OpAdd}, def, 4)
	if err != nil {
		t.Fatal(err)
	}
	cal := &Calibration{Rollouts: 3}
	for l := 0; l < 4; l++ {
		cal.RoleWard = append(cal.RoleWard, map[string]float64{"p1": -5 - float64(l), "p25": -2 - float64(l), "p50": 0, "p75": 1})
	}
	return &AxisFolder{Axis: axis, Default: dv, Calibration: cal}
}

// A folder saved and opened again gives the same caps: floors at the negated role-ward percentile, on the unit
// axis, at every layer of the window.
func TestAxisFolderRoundTripAndCaps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "axis")
	if err := testFolder(t).Save(dir); err != nil {
		t.Fatal(err)
	}
	f, err := OpenAxisFolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	if f.Default == nil || f.Calibration == nil || f.Dir != dir {
		t.Fatalf("opened %+v", f)
	}
	caps, err := f.Caps(CapRule{Window: [2]int{1, 3}, P: 0.25})
	if err != nil {
		t.Fatal(err)
	}
	if len(caps) != 2 || caps[0].Layer != 1 || caps[1].Layer != 2 || caps[0].Kind != model.Cap {
		t.Fatalf("caps %+v", caps)
	}
	if caps[0].Tau != 3 || caps[1].Tau != 4 || caps[0].Vectors[0][0] != 1 || caps[0].Label != "cap layers_1:3-p0.25" {
		t.Fatalf("caps are not floors at -(role-ward p25) on the unit axis: %+v", caps)
	}
	if tau := f.Tau(CapRule{Window: [2]int{1, 3}, P: 0.25}, 2); tau != 4 {
		t.Fatalf("tau at layer 2 = %g", tau)
	}
	if tau := f.Tau(CapRule{Window: [2]int{1, 3}, P: 0.25}, 3); !math.IsNaN(tau) {
		t.Fatalf("tau outside the window = %g", tau)
	}
	if ps := f.Percentiles(); len(ps) != 4 || ps[0] != 0.01 || ps[3] != 0.75 {
		t.Fatalf("percentiles %v", ps)
	}
	line, top, ok := f.Scale(0)
	if !ok || top != 2 || line != 1.5 {
		t.Fatalf("scale at layer 0: line %g, assistant %g, %v", line, top, ok)
	}
	for rule, want := range map[CapRule]string{
		{Window: [2]int{1, 3}, P: 0.33}: "no percentile p33 in the calibration (it has p1, p25, p50, p75)",
		{Window: [2]int{3, 9}, P: 0.25}: "not a window of the model's 4 layers",
		{Window: [2]int{2, 2}, P: 0.25}: "not a window",
	} {
		if _, err := f.Caps(rule); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v, want %q", rule, err, want)
		}
	}
	if _, err := OpenAxisFolder(filepath.Join(dir, "nowhere")); err == nil || !strings.Contains(err.Error(), "keel axis extract") {
		t.Fatalf("a missing folder: %v", err)
	}
}

// One spelling each: a percentile's name is p25, a setting's id is the paper's layers_A:B-p0.25.
func TestCapSpellings(t *testing.T) {
	for name, want := range map[string]float64{"p25": 0.25, "p1": 0.01, "p2.5": 0.025, "p75": 0.75} {
		got, err := ParsePercentile(name)
		if err != nil || math.Abs(got-want) > 1e-12 || PercentileName(got) != name {
			t.Errorf("%s: %g %v (name back %s)", name, got, err, PercentileName(got))
		}
	}
	for _, bad := range []string{"25", "p", "p0", "p100", "pNaN", "q25", "p-3"} {
		if _, err := ParsePercentile(bad); err == nil {
			t.Errorf("%q accepted as a percentile", bad)
		}
	}
	r := CapRule{Window: [2]int{3, 5}, P: 0.25}
	if r.ID() != "layers_3:5-p0.25" {
		t.Fatalf("id %s", r.ID())
	}
	back, err := ParseCapID(r.ID())
	if err != nil || back != r {
		t.Fatalf("%s read back as %+v, %v", r.ID(), back, err)
	}
	for _, bad := range []string{"", "layers_3-5-p0.25", "layers_a:b-p0.25", "nonsense", "layers_3:5-px"} {
		if _, err := ParseCapID(bad); err == nil {
			t.Errorf("%q accepted as a cap id", bad)
		}
	}
	if _, err := ParseWindow("2:6"); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseWindow("2-6"); err == nil {
		t.Fatal("2-6 accepted as a window")
	}
}

func FuzzParseCapID(f *testing.F) {
	f.Add("layers_3:5-p0.25")
	f.Add("layers_-1:99-p1e300")
	f.Fuzz(func(t *testing.T, id string) {
		r, err := ParseCapID(id)
		if err != nil {
			return
		}
		if r.Check(64) == nil {
			if _, err := ParseCapID(r.ID()); err != nil {
				t.Fatalf("%q: its own id %q does not parse: %v", id, r.ID(), err)
			}
		}
	})
}
