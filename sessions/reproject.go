package sessions

import (
	"fmt"

	"github.com/keel-lab/keel/engine/model"
)

// Reproject recomputes every generated token's projections onto axis (layer -> unit vector) by teacher-forcing
// the recorded context and tokens through m with the turn's recorded interventions, without generating. It
// returns per generated turn, per token, the projection at each of layers.
func Reproject(m *model.Model, s *Session, axis map[int][]float32, layers []int) ([][][]float32, error) {
	for _, l := range layers {
		if _, ok := axis[l]; !ok {
			return nil, fmt.Errorf("the axis has no vector for layer %d", l)
		}
	}
	var out [][][]float32
	for _, t := range s.Turns() {
		if len(t.Start.Context) == 0 || len(t.Tokens) == 0 {
			continue
		}
		list := append([]model.Intervention(nil), t.Start.Interventions...)
		first := len(list)
		for _, l := range layers {
			list = append(list, model.Intervention{Layer: l, Kind: model.Capture, Vectors: [][]float32{axis[l]}})
		}
		seq := append([]int(nil), t.Start.Context...)
		for _, tok := range t.Tokens[:len(t.Tokens)-1] {
			seq = append(seq, tok.ID)
		}
		tf, err := m.TeacherForce([][]int{seq}, model.NewHooks(list...), nil)
		if err != nil {
			return nil, fmt.Errorf("turn %d: %w", t.Index, err)
		}
		// Token k was produced from position len(context)-1+k.
		turn := make([][]float32, len(t.Tokens))
		for k := range t.Tokens {
			recs := tf.Records[0][len(t.Start.Context)-1+k]
			proj := make([]float32, len(layers))
			n := 0
			for _, r := range recs {
				if r.Intervention >= first {
					proj[n] = r.Values[0]
					n++
				}
			}
			turn[k] = proj
		}
		out = append(out, turn)
	}
	return out, nil
}
