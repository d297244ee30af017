package sessions

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The PNG plots the plotted layer alone unless --layers says otherwise, marks where each reply starts, and draws
// the drift line and tau as the chat had them at each token.
func TestPNGPlotsWhatTheChatPlotted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.jsonl")
	rec, err := Create(path, Header{Keel: "test", Model: "m", Layers: []int{0, 1, 2, 3}, NLayers: 4})
	if err != nil {
		t.Fatal(err)
	}
	lines := func(layer int, drift float64, tau *float64) {
		raw, _ := json.Marshal(PlotLines{Layer: layer, DriftLine: &drift, Tau: tau})
		rec.Add(Event{Type: Control, Name: ControlsEvent, Value: raw})
	}
	reply := func(n int) {
		rec.Add(Event{Type: TurnStart, Role: "user"})
		rec.Add(Event{Type: TurnEnd, Role: "user", Text: "q"})
		rec.Add(Event{Type: TurnStart, Role: "assistant"})
		for i := 0; i < n; i++ {
			rec.Add(Event{Type: Token, ID: i + 1, Piece: "w", Proj: []float32{0, 1, 2, float32(i)}})
		}
		rec.Add(Event{Type: TurnEnd, Role: "assistant", Text: "w"})
	}
	lines(3, 0.5, nil)
	reply(4)
	tau := 1.25
	lines(3, 0.5, &tau) // capping switched on
	reply(3)
	lines(2, 0.75, nil) // the plotted layer moved
	reply(2)
	rec.Close()
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.pngData(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.series) != 1 || d.layers[0] != 2 || len(d.series[0]) != 9 {
		t.Fatalf("default layers %v, %d series", d.layers, len(d.series))
	}
	if len(d.replyStarts) != 3 || d.replyStarts[1] != 4 || d.replyStarts[2] != 7 {
		t.Fatalf("reply starts %v", d.replyStarts)
	}
	if len(d.drift) != 2 || d.drift[0].Y != 0.75 || len(d.tau) != 0 {
		t.Fatalf("layer 2's lines: drift %v tau %v", d.drift, d.tau)
	}
	d, err = s.pngData([]int{3})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.drift) != 7 || len(d.tau) != 3 || d.tau[0].X != 4 || d.tau[0].Y != 1.25 {
		t.Fatalf("layer 3's lines: drift %d points, tau %v", len(d.drift), d.tau)
	}
	if d, err = s.pngData([]int{1, 3}); err != nil || len(d.series) != 2 || len(d.drift) != 0 {
		t.Fatalf("two layers: %v", err)
	}
	if _, err := s.pngData([]int{7}); err == nil || !strings.Contains(err.Error(), "recorded layers [0 1 2 3]") {
		t.Fatalf("an unrecorded layer: %v", err)
	}
	out := filepath.Join(t.TempDir(), "drift.png")
	if err := s.Export("png", out, ExportOptions{Layers: []int{3}}); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(out); len(raw) < 8 || string(raw[1:4]) != "PNG" {
		t.Fatal("not a PNG")
	}
}
