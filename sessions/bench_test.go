package sessions

import (
	"path/filepath"
	"testing"
)

// writeLongSession records 10,000 generated tokens with projections on 16 layers (more than the embedded
// model has) and a cap movement each.
func writeLongSession(b testing.TB) string {
	path := filepath.Join(b.TempDir(), "long.jsonl")
	layers := make([]int, 16)
	for i := range layers {
		layers[i] = i
	}
	rec, err := Create(path, Header{Keel: "bench", Model: "bench", Layers: layers, Term: Term{Cols: 120, Rows: 40}})
	if err != nil {
		b.Fatal(err)
	}
	proj := make([]float32, len(layers))
	for turn := 0; turn < 50; turn++ {
		rec.Add(Event{Type: TurnStart, Role: "assistant", Context: []int{1, 2, 3}})
		for k := 0; k < 200; k++ {
			for i := range proj {
				proj[i] = float32(turn*k+i) * 0.001
			}
			rec.Add(Event{Type: Token, ID: k, Piece: " tok", Proj: proj, Caps: []float32{0.25}})
		}
		rec.Add(Event{Type: TurnEnd, Role: "assistant", Text: "..."})
	}
	if err := rec.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkLoad10kTokens: the goal is <= 200 ms per load.
func BenchmarkLoad10kTokens(b *testing.B) {
	path := writeLongSession(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := Load(path)
		if err != nil {
			b.Fatal(err)
		}
		if len(s.Events) != 10100 {
			b.Fatalf("%d events", len(s.Events))
		}
	}
}
