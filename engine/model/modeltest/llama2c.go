package modeltest

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/keel-lab/keel/engine/torch/torchtest"
)

// Llama2c is an independent reference for the engine: llama2.c's run.c forward pass, written out in plain Go
// over the fixture's own file (no conversion, no libtorch), with a hook at each decoder layer's output.
type Llama2c struct {
	Dim, Hidden, Layers, Heads, KVHeads, Vocab, SeqLen int

	embed, rmsAtt, wq, wk, wv, wo, rmsFFN, w1, w2, w3, rmsFinal []float32
	keys, values                                                []float32 // [layer][pos][kvDim]
}

// StoriesReference reads the stories260K fixture's llama2.c checkpoint.
func StoriesReference(t testing.TB) *Llama2c {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(torchtest.Fixtures(t), "stories260k", "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := readLlama2c(raw)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readLlama2c(raw []byte) (*Llama2c, error) {
	if len(raw) < 28 {
		return nil, fmt.Errorf("llama2.c checkpoint: %d bytes, shorter than its header", len(raw))
	}
	h := make([]int, 7)
	for i := range h {
		h[i] = int(int32(binary.LittleEndian.Uint32(raw[4*i:])))
	}
	r := &Llama2c{Dim: h[0], Hidden: h[1], Layers: h[2], Heads: h[3], KVHeads: h[4], Vocab: h[5], SeqLen: h[6]}
	if r.Vocab < 0 {
		return nil, fmt.Errorf("llama2.c checkpoint: an unshared classifier is not read by this reference")
	}
	floats := raw[28:]
	next := func(n int) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(floats[4*i:]))
		}
		floats = floats[4*n:]
		return out
	}
	kv := r.Dim / r.Heads * r.KVHeads
	L, D, F := r.Layers, r.Dim, r.Hidden
	need := r.Vocab*D + L*D + L*D*D + 2*L*kv*D + L*D*D + L*D + 3*L*F*D + D
	if len(floats) < 4*need {
		return nil, fmt.Errorf("llama2.c checkpoint: %d bytes of weights, the header needs %d", len(floats), 4*need)
	}
	r.embed, r.rmsAtt, r.wq, r.wk, r.wv = next(r.Vocab*D), next(L*D), next(L*D*D), next(L*kv*D), next(L*kv*D)
	r.wo, r.rmsFFN, r.w1, r.w2, r.w3, r.rmsFinal = next(L*D*D), next(L*D), next(L*F*D), next(L*D*F), next(L*F*D), next(D)
	r.keys = make([]float32, L*r.SeqLen*kv)
	r.values = make([]float32, L*r.SeqLen*kv)
	return r, nil
}

func rmsnorm(out, x, w []float32) {
	var ss float32
	for _, v := range x {
		ss += v * v
	}
	ss = 1 / float32(math.Sqrt(float64(ss/float32(len(x))+1e-5)))
	for i := range x {
		out[i] = w[i] * (ss * x[i])
	}
}

// matmul: out[i] = sum_j w[i*n+j] x[j], w of shape [len(out), n].
func matmul(out, x, w []float32) {
	n := len(x)
	for i := range out {
		var s float32
		for j, v := range x {
			s += w[i*n+j] * v
		}
		out[i] = s
	}
}

// Forward runs one token at position pos (positions must come in order from 0) and returns the logits. hook, when
// set, may change the residual stream x after each decoder layer.
func (r *Llama2c) Forward(token, pos int, hook func(layer int, x []float32)) []float32 {
	D, F, hs := r.Dim, r.Hidden, r.Dim/r.Heads
	kv := hs * r.KVHeads
	x := append([]float32(nil), r.embed[token*D:(token+1)*D]...)
	xb, xb2, q := make([]float32, D), make([]float32, D), make([]float32, D)
	hb, hb2 := make([]float32, F), make([]float32, F)
	att := make([]float32, pos+1)
	for l := 0; l < r.Layers; l++ {
		rmsnorm(xb, x, r.rmsAtt[l*D:(l+1)*D])
		off := (l*r.SeqLen + pos) * kv
		k, v := r.keys[off:off+kv], r.values[off:off+kv]
		matmul(q, xb, r.wq[l*D*D:(l+1)*D*D])
		matmul(k, xb, r.wk[l*kv*D:(l+1)*kv*D])
		matmul(v, xb, r.wv[l*kv*D:(l+1)*kv*D])
		// Interleaved (GPT-J) rotary pairs, theta 10000.
		for i := 0; i < D; i += 2 {
			freq := 1 / float32(math.Pow(10000, float64(i%hs)/float64(hs)))
			c, s := float32(math.Cos(float64(float32(pos)*freq))), float32(math.Sin(float64(float32(pos)*freq)))
			rot := func(vec []float32) {
				a, b := vec[i], vec[i+1]
				vec[i], vec[i+1] = a*c-b*s, a*s+b*c
			}
			rot(q)
			if i < kv {
				rot(k)
			}
		}
		for h := 0; h < r.Heads; h++ {
			qh := q[h*hs : (h+1)*hs]
			kvh := h / (r.Heads / r.KVHeads)
			maxv := float32(math.Inf(-1))
			for t := 0; t <= pos; t++ {
				kt := r.keys[(l*r.SeqLen+t)*kv+kvh*hs:]
				var s float32
				for i := 0; i < hs; i++ {
					s += qh[i] * kt[i]
				}
				att[t] = s / float32(math.Sqrt(float64(hs)))
				maxv = max(maxv, att[t])
			}
			var sum float32
			for t := 0; t <= pos; t++ {
				att[t] = float32(math.Exp(float64(att[t] - maxv)))
				sum += att[t]
			}
			out := xb[h*hs : (h+1)*hs]
			clear(out)
			for t := 0; t <= pos; t++ {
				vt := r.values[(l*r.SeqLen+t)*kv+kvh*hs:]
				for i := 0; i < hs; i++ {
					out[i] += att[t] / sum * vt[i]
				}
			}
		}
		matmul(xb2, xb, r.wo[l*D*D:(l+1)*D*D])
		for i := range x {
			x[i] += xb2[i]
		}
		rmsnorm(xb, x, r.rmsFFN[l*D:(l+1)*D])
		matmul(hb, xb, r.w1[l*F*D:(l+1)*F*D])
		matmul(hb2, xb, r.w3[l*F*D:(l+1)*F*D])
		for i := range hb {
			hb[i] = hb[i] / (1 + float32(math.Exp(float64(-hb[i])))) * hb2[i]
		}
		matmul(xb, hb, r.w2[l*D*F:(l+1)*D*F])
		for i := range x {
			x[i] += xb[i]
		}
		if hook != nil {
			hook(l, x)
		}
	}
	rmsnorm(x, x, r.rmsFinal)
	logits := make([]float32, r.Vocab)
	matmul(logits, x, r.embed)
	return logits
}

// Greedy continues prompt by n argmax tokens, restarting the cache; it returns the generated ids.
func (r *Llama2c) Greedy(prompt []int, n int, hook func(layer int, x []float32)) []int {
	var out []int
	var logits []float32
	for pos, tok := range prompt {
		logits = r.Forward(tok, pos, hook)
	}
	for pos := len(prompt); len(out) < n && pos < r.SeqLen; pos++ {
		best := 0
		for i, v := range logits {
			if v > logits[best] {
				best = i
			}
		}
		out = append(out, best)
		logits = r.Forward(best, pos, hook)
	}
	return out
}
