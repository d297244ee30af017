package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
)

// archNames maps keel's architectures to llama.cpp's (Mistral runs as llama.cpp's llama, which has no sliding
// window).
var archNames = map[string]string{
	"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
	"Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
	"Gemma3ForConditionalGeneration": "gemma3", "Olmo2ForCausalLM": "olmo2",
}

// tensorNames maps Hugging Face weight names (after "model.layers.N.") to llama.cpp's.
var tensorNames = map[string]string{
	"input_layernorm.weight":            "attn_norm.weight",
	"self_attn.q_proj.weight":           "attn_q.weight",
	"self_attn.k_proj.weight":           "attn_k.weight",
	"self_attn.v_proj.weight":           "attn_v.weight",
	"self_attn.o_proj.weight":           "attn_output.weight",
	"self_attn.q_proj.bias":             "attn_q.bias",
	"self_attn.k_proj.bias":             "attn_k.bias",
	"self_attn.v_proj.bias":             "attn_v.bias",
	"self_attn.o_proj.bias":             "attn_output.bias",
	"self_attn.q_norm.weight":           "attn_q_norm.weight",
	"self_attn.k_norm.weight":           "attn_k_norm.weight",
	"mlp.gate_proj.weight":              "ffn_gate.weight",
	"mlp.up_proj.weight":                "ffn_up.weight",
	"mlp.down_proj.weight":              "ffn_down.weight",
	"post_feedforward_layernorm.weight": "post_ffw_norm.weight",
	"pre_feedforward_layernorm.weight":  "ffn_norm.weight",
}

// ExportModel writes m (with its tokenizer, or a synthetic SentencePiece-style vocabulary of byte tokens when
// tok is nil) as a GGUF file llama.cpp loads: llama.cpp's metadata keys and tensor names for the architecture,
// q/k rows reordered for llama.cpp's interleaved RoPE on Llama, Gemma's norms stored as 1 + w, llama3 RoPE
// scaling as a rope_freqs tensor.
func ExportModel(m *model.Model, tok tokenizer.Tokenizer, out string, dtype uint32) error {
	c := m.Config
	arch, ok := archNames[c.Architecture()]
	if !ok {
		return fmt.Errorf("export gguf: %s has no llama.cpp counterpart", c.Architecture())
	}
	if err := llamaCppCanRun(m, arch); err != nil {
		return fmt.Errorf("export gguf: %w", err)
	}
	p := arch + "."
	kvs := []KV{
		{"general.architecture", arch},
		{"general.name", "keel export"},
		{"general.alignment", uint32(alignment)},
		{p + "context_length", uint32(c.MaxPositionEmbeddings)},
		{p + "embedding_length", uint32(c.HiddenSize)},
		{p + "block_count", uint32(c.NumHiddenLayers)},
		{p + "feed_forward_length", uint32(c.IntermediateSize)},
		{p + "attention.head_count", uint32(c.NumAttentionHeads)},
		{p + "attention.head_count_kv", uint32(c.NumKeyValueHeads)},
		{p + "attention.layer_norm_rms_epsilon", float32(c.RMSNormEps)},
		{p + "rope.freq_base", float32(c.RopeTheta)},
		{p + "rope.dimension_count", uint32(c.HeadDim)},
		{p + "attention.key_length", uint32(c.HeadDim)},
		{p + "attention.value_length", uint32(c.HeadDim)},
		{p + "vocab_size", uint32(c.VocabSize)},
	}
	if arch == "gemma3" {
		if c.SlidingWindow != nil {
			kvs = append(kvs, KV{p + "attention.sliding_window", uint32(*c.SlidingWindow)})
		}
		if c.RopeScaling.Kind() == "linear" {
			kvs = append(kvs, KV{p + "rope.scaling.type", "linear"}, KV{p + "rope.scaling.factor", float32(c.RopeScaling.Factor)})
		}
	}
	if arch == "gemma2" {
		if c.AttnLogitSoftcapping != nil {
			kvs = append(kvs, KV{p + "attn_logit_softcapping", float32(*c.AttnLogitSoftcapping)})
		}
		if c.FinalLogitSoftcapping != nil {
			kvs = append(kvs, KV{p + "final_logit_softcapping", float32(*c.FinalLogitSoftcapping)})
		}
		if c.SlidingWindow != nil {
			kvs = append(kvs, KV{p + "attention.sliding_window", uint32(*c.SlidingWindow)})
		}
	}
	tk, err := tokenizerKVs(tok, c.VocabSize)
	if err != nil {
		return err
	}
	kvs = append(kvs, tk...)
	if hf, ok := tok.(*tokenizer.HF); ok && hf.ChatTemplates["default"] != "" {
		kvs = append(kvs, KV{"tokenizer.chat_template", hf.ChatTemplates["default"]})
	}

	s := m.RT.NewScope().NoGrad()
	defer s.Close()
	var tensors []Tensor
	add := func(name string, shape []int64, data []float32) {
		tensors = append(tensors, Tensor{Name: name, Shape: shape, Type: dtype, Data: encode(data, dtype)})
	}
	tied := m.LMHead == m.Embed
	for _, nt := range m.Names {
		data := s.Float32s(nt.Tensor)
		shape := s.Shape(nt.Tensor)
		if err := s.Err(); err != nil {
			return err
		}
		name := nt.Name
		var ggml string
		switch {
		case name == "model.embed_tokens.weight":
			ggml = "token_embd.weight"
		case name == "model.norm.weight":
			ggml = "output_norm.weight"
		case name == "lm_head.weight":
			if tied {
				continue
			}
			ggml = "output.weight"
		default:
			rest, ok := strings.CutPrefix(name, "model.layers.")
			if !ok {
				return fmt.Errorf("export gguf: unexpected tensor %s", name)
			}
			layer, suffix, _ := strings.Cut(rest, ".")
			if postNorms[arch] && suffix == "post_attention_layernorm.weight" {
				ggml = "blk." + layer + ".post_attention_norm.weight"
			} else if suffix == "post_attention_layernorm.weight" {
				ggml = "blk." + layer + ".ffn_norm.weight"
			} else if n, ok := tensorNames[suffix]; ok {
				ggml = "blk." + layer + "." + n
			} else {
				return fmt.Errorf("export gguf: no llama.cpp name for %s", name)
			}
			if arch == "llama" && (suffix == "self_attn.q_proj.weight" || suffix == "self_attn.k_proj.weight") {
				heads := c.NumAttentionHeads
				if suffix == "self_attn.k_proj.weight" {
					heads = c.NumKeyValueHeads
				}
				data = halvesToInterleaved(data, heads, c.HeadDim, int(shape[1]))
			}
		}
		if (arch == "gemma2" || arch == "gemma3") && strings.HasSuffix(ggml, "norm.weight") {
			for i := range data {
				data[i]++
			}
		}
		add(ggml, shape, data)
	}
	if c.RopeScaling.Kind() == "llama3" {
		// rope_freqs stays F32 whatever the weights' type.
		tensors = append(tensors, Tensor{Name: "rope_freqs.weight", Shape: []int64{int64(c.HeadDim / 2)}, Type: GGMLF32, Data: encode(llama3Factors(c), GGMLF32)})
	}
	return Write(out, kvs, tensors)
}

// postNorms are the architectures whose post_attention_layernorm follows attention (llama.cpp's
// post_attention_norm) rather than preceding the MLP (llama.cpp's ffn_norm).
var postNorms = map[string]bool{"gemma2": true, "gemma3": true, "olmo2": true}

// llamaCppCanRun refuses what llama.cpp would load but compute differently: it fixes some of Gemma's
// hyperparameters instead of reading them.
func llamaCppCanRun(m *model.Model, arch string) error {
	c := m.Config
	switch arch {
	case "gemma2", "gemma3":
		if c.QueryPreAttnScalar != 0 && c.QueryPreAttnScalar != float64(c.HeadDim) {
			return fmt.Errorf("%s with query_pre_attn_scalar %v != head_dim %d: llama.cpp scales queries by head_dim for this model size", c.Architecture(), c.QueryPreAttnScalar, c.HeadDim)
		}
	}
	if arch != "gemma3" {
		return nil
	}
	if c.AttnLogitSoftcapping != nil || c.FinalLogitSoftcapping != nil {
		return fmt.Errorf("Gemma 3 with soft-capping: llama.cpp's Gemma 3 has none")
	}
	if m.Spec.LocalRopeTheta != 10000 {
		return fmt.Errorf("Gemma 3 with rope_local_base_freq %v: llama.cpp fixes it at 10000", m.Spec.LocalRopeTheta)
	}
	for i, sliding := range m.Spec.Sliding {
		if sliding != ((i+1)%6 != 0) {
			return fmt.Errorf("Gemma 3 whose layer %d breaks the five-sliding-one-global pattern: llama.cpp fixes that pattern", i)
		}
	}
	switch k := c.RopeScaling.Kind(); k {
	case "default", "linear":
	default:
		return fmt.Errorf("Gemma 3 with %s RoPE scaling: this export writes linear scaling only", k)
	}
	return nil
}

// halvesToInterleaved reorders q/k rows from Hugging Face's rotate-half pairing to llama.cpp's interleaved one.
func halvesToInterleaved(w []float32, heads, hd, cols int) []float32 {
	out := make([]float32, len(w))
	for h := 0; h < heads; h++ {
		for i := 0; i < hd/2; i++ {
			for pair := 0; pair < 2; pair++ {
				src := h*hd + pair*(hd/2) + i
				dst := h*hd + 2*i + pair
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

// llama3Factors are llama.cpp's rope_freqs: the divisor of each inverse frequency under llama3 scaling.
func llama3Factors(c *model.Config) []float32 {
	r := c.RopeScaling
	old := float64(r.OriginalMaxPositionEmbeddings)
	low, high := old/r.LowFreqFactor, old/r.HighFreqFactor
	out := make([]float32, c.HeadDim/2)
	for i := range out {
		freq := 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
		wavelen := 2 * math.Pi / freq
		switch {
		case wavelen < high:
			out[i] = 1
		case wavelen > low:
			out[i] = float32(r.Factor)
		default:
			smooth := (old/wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
			out[i] = float32(1 / ((1-smooth)/r.Factor + smooth))
		}
	}
	return out
}

func encode(xs []float32, dtype uint32) []byte {
	if dtype == GGMLF16 {
		b := make([]byte, 2*len(xs))
		for i, x := range xs {
			binary.LittleEndian.PutUint16(b[2*i:], f16(x))
		}
		return b
	}
	b := make([]byte, 4*len(xs))
	for i, x := range xs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// f16 rounds a float32 to IEEE half (to nearest even).
func f16(x float32) uint16 {
	b := math.Float32bits(x)
	sign := uint16(b>>16) & 0x8000
	a := math.Abs(float64(x))
	switch {
	case x != x:
		return sign | 0x7e00
	case a >= 65520:
		return sign | 0x7c00
	case a < math.Ldexp(1, -25):
		return sign
	case a < math.Ldexp(1, -14):
		return sign | uint16(math.RoundToEven(a/math.Ldexp(1, -24)))
	}
	e := math.Floor(math.Log2(a))
	mant := math.RoundToEven((a/math.Ldexp(1, int(e)) - 1) * 1024)
	if mant == 1024 {
		mant, e = 0, e+1
	}
	return sign | uint16(int(e)+15)<<10 | uint16(mant)
}

// tokenizerKVs describes the vocabulary the way llama.cpp reads it.
func tokenizerKVs(tok tokenizer.Tokenizer, vocab int) ([]KV, error) {
	if tok == nil {
		// A synthetic SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, then filler pieces.
		if vocab < 259 {
			return nil, fmt.Errorf("export gguf: a model without a tokenizer needs a vocabulary of at least 259 ids for the synthetic one (has %d)", vocab)
		}
		tokens := make([]string, vocab)
		scores := make([]float32, vocab)
		types := make([]int32, vocab)
		for i := range tokens {
			switch {
			case i == 0:
				tokens[i], types[i] = "<unk>", tokUnknown
			case i <= 2:
				tokens[i], types[i] = []string{"", "<s>", "</s>"}[i], tokControl
			case i < 259:
				tokens[i], types[i] = fmt.Sprintf("<0x%02X>", i-3), tokByte
			default:
				tokens[i], types[i] = spmSpace+"t"+strconv.Itoa(i), tokNormal
				scores[i] = -float32(i)
			}
		}
		return spmKVs(tokens, scores, types, 1, 2, 0, true), nil
	}
	switch t := tok.(type) {
	case *tokenizer.Llama2c:
		n := t.VocabSize()
		if vocab < n {
			return nil, fmt.Errorf("export gguf: tokenizer has %d tokens, the model %d", n, vocab)
		}
		tokens := make([]string, n)
		scores := make([]float32, n)
		types := make([]int32, n)
		for i := 0; i < n; i++ {
			// llama2.c's pieces spell SentencePiece's word boundary as a plain space; llama.cpp matches "▁".
			tokens[i], scores[i] = strings.ReplaceAll(t.Piece(i), " ", spmSpace), t.Score(i)
			switch {
			case i == 0:
				types[i] = tokUnknown
			case i <= 2:
				types[i] = tokControl
			case isByteToken(tokens[i]):
				types[i] = tokByte
			default:
				types[i] = tokNormal
			}
		}
		return spmKVs(tokens, scores, types, 1, 2, 0, true), nil
	case *tokenizer.HF:
		if !t.ByteLevel() {
			return hfSPMKVs(t, vocab)
		}
		n := t.VocabSize()
		tokens := make([]string, n)
		types := make([]int32, n)
		for i := range tokens {
			tokens[i], types[i] = t.Piece(i), tokNormal
			if tokens[i] == "" {
				tokens[i], types[i] = fmt.Sprintf("[PAD%d]", i), tokUnused
			}
			if t.IsSpecial(i) {
				types[i] = tokControl
			}
		}
		merges := make([]string, len(t.Merges()))
		for i, m := range t.Merges() {
			merges[i] = m[0] + " " + m[1]
		}
		// llama.cpp picks its pre-tokenizer split by name.
		pre := "default"
		switch t.SplitRegex() {
		case `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`:
			pre = "llama-bpe"
		case `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`:
			pre = "qwen2"
		}
		kvs := []KV{
			{"tokenizer.ggml.model", "gpt2"},
			{"tokenizer.ggml.pre", pre},
			{"tokenizer.ggml.tokens", tokens},
			{"tokenizer.ggml.token_type", types},
			{"tokenizer.ggml.merges", merges},
		}
		if b := t.BOS(); b >= 0 {
			kvs = append(kvs, KV{"tokenizer.ggml.bos_token_id", uint32(b)}, KV{"tokenizer.ggml.add_bos_token", true})
		} else {
			kvs = append(kvs, KV{"tokenizer.ggml.add_bos_token", false})
		}
		if e := t.EOS(); e >= 0 {
			kvs = append(kvs, KV{"tokenizer.ggml.eos_token_id", uint32(e)})
		}
		return kvs, nil
	}
	return nil, fmt.Errorf("export gguf: writing %T tokenizers to GGUF is not supported", tok)
}

// llama.cpp's token types (llama_token_type).
const (
	tokNormal      int32 = 1
	tokUnknown     int32 = 2
	tokControl     int32 = 3
	tokUserDefined int32 = 4
	tokUnused      int32 = 5
	tokByte        int32 = 6
)

// spmSpace is SentencePiece's word-boundary mark, U+2581.
const spmSpace = "\u2581"

func isByteToken(p string) bool {
	return len(p) == 6 && strings.HasPrefix(p, "<0x") && p[5] == '>' && isHex(p[3]) && isHex(p[4])
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' || c >= 'a' && c <= 'f' }

// hfSPMKVs writes a SentencePiece-style tokenizer.json (BPE with byte fallback and "▁" for spaces: Llama 2,
// Mistral, Gemma) as llama.cpp's "llama" vocabulary. llama.cpp merges the adjacent pair whose concatenation has the
// highest score, where tokenizer.json ranks merges; a piece's score is minus the rank of the first merge that
// makes it, which orders the pairs as the merge list does.
func hfSPMKVs(t *tokenizer.HF, vocab int) ([]KV, error) {
	if n := t.VocabSize(); vocab < n {
		return nil, fmt.Errorf("export gguf: tokenizer has %d tokens, the model %d", n, vocab)
	}
	n := vocab // ids past the tokenizer's (a padded embedding) are written as unused pieces
	rank := make(map[string]int, len(t.Merges()))
	for r, m := range t.Merges() {
		if _, seen := rank[m[0]+m[1]]; !seen {
			rank[m[0]+m[1]] = r
		}
	}
	tokens := make([]string, n)
	scores := make([]float32, n)
	types := make([]int32, n)
	for i := range tokens {
		tokens[i], types[i] = "", tokNormal
		if i < t.VocabSize() {
			tokens[i] = t.Piece(i)
		}
		if r, ok := rank[tokens[i]]; ok {
			scores[i] = -float32(r)
		} else if len([]rune(tokens[i])) > 1 {
			// A longer piece no merge makes is never produced by tokenizer.json's BPE; llama.cpp only tries it
			// after every merge.
			scores[i] = -float32(len(t.Merges()) + i)
		}
		switch {
		case tokens[i] == "" || (i != t.UnknownID() && tokens[i] == t.Piece(t.UnknownID()) && t.UnknownID() >= 0):
			tokens[i], types[i] = fmt.Sprintf("[PAD%d]", i), tokUnused
		case i == t.UnknownID():
			types[i] = tokUnknown
		case t.IsSpecial(i):
			types[i] = tokControl
		case t.IsAdded(i):
			types[i] = tokUserDefined
		case isByteToken(tokens[i]):
			types[i] = tokByte
		}
	}
	bos, eos, unk := t.BOS(), t.EOS(), t.UnknownID()
	// The model's own behaviour decides the prefix: SentencePiece's add_dummy_prefix (Llama 2, Mistral) marks
	// the first word with "▁"; Gemma's does not.
	prefix := false
	if ids := t.Encode("x", false); len(ids) > 0 {
		prefix = strings.HasPrefix(t.Piece(ids[0]), spmSpace)
	}
	kvs := []KV{
		{"tokenizer.ggml.model", "llama"},
		{"tokenizer.ggml.tokens", tokens},
		{"tokenizer.ggml.scores", scores},
		{"tokenizer.ggml.token_type", types},
		{"tokenizer.ggml.add_space_prefix", prefix},
		{"tokenizer.ggml.add_bos_token", bos >= 0},
		{"tokenizer.ggml.add_eos_token", false},
	}
	for _, id := range []struct {
		key string
		id  int
	}{{"tokenizer.ggml.bos_token_id", bos}, {"tokenizer.ggml.eos_token_id", eos}, {"tokenizer.ggml.unknown_token_id", unk}} {
		if id.id >= 0 {
			kvs = append(kvs, KV{id.key, uint32(id.id)})
		}
	}
	return kvs, nil
}

func spmKVs(tokens []string, scores []float32, types []int32, bos, eos, unk uint32, prefix bool) []KV {
	return []KV{
		{"tokenizer.ggml.add_space_prefix", prefix},
		{"tokenizer.ggml.model", "llama"},
		{"tokenizer.ggml.tokens", tokens},
		{"tokenizer.ggml.scores", scores},
		{"tokenizer.ggml.token_type", types},
		{"tokenizer.ggml.bos_token_id", bos},
		{"tokenizer.ggml.eos_token_id", eos},
		{"tokenizer.ggml.unknown_token_id", unk},
		{"tokenizer.ggml.add_bos_token", true},
	}
}
