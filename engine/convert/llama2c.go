// Package convert turns checkpoints of other formats into Hugging Face model folders.
package convert

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/keel-lab/keel/engine/safetensors"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/internal/atomicfile"
)

// Llama2cHeader is the 7-int32 header of a llama2.c checkpoint.
type Llama2cHeader struct {
	Dim, HiddenDim, Layers, Heads, KVHeads, VocabSize, SeqLen int32
}

// Llama2c converts a llama2.c checkpoint (legacy format) and its tokenizer.bin into a Hugging Face folder:
// config.json, generation_config.json, model.safetensors (F32) and the tokenizer.
func Llama2c(modelPath, tokPath, outDir string) error {
	f, err := os.Open(modelPath)
	if err != nil {
		return err
	}
	defer f.Close()
	var h Llama2cHeader
	if err := binary.Read(f, binary.LittleEndian, &h); err != nil {
		return fmt.Errorf("%s: reading the 28-byte header: %v", modelPath, err)
	}
	shared := h.VocabSize > 0
	if h.VocabSize < 0 {
		h.VocabSize = -h.VocabSize
	}
	for name, v := range map[string]int32{"dim": h.Dim, "hidden_dim": h.HiddenDim, "n_layers": h.Layers, "n_heads": h.Heads, "n_kv_heads": h.KVHeads, "vocab_size": h.VocabSize, "seq_len": h.SeqLen} {
		if v <= 0 || v > 1<<20 {
			return fmt.Errorf("%s: header %s = %d is not plausible: not a llama2.c checkpoint (legacy format)", modelPath, name, v)
		}
	}
	if h.Dim%h.Heads != 0 || h.Heads%h.KVHeads != 0 {
		return fmt.Errorf("%s: dim %d, n_heads %d, n_kv_heads %d are inconsistent", modelPath, h.Dim, h.Heads, h.KVHeads)
	}
	tokRaw, err := os.ReadFile(tokPath)
	if err != nil {
		return err
	}
	tok, err := tokenizer.ParseLlama2c(tokRaw, tokPath)
	if err != nil {
		return err
	}
	if tok.VocabSize() != int(h.VocabSize) {
		return fmt.Errorf("%s has %d tokens but %s's vocab_size is %d: they do not belong together", tokPath, tok.VocabSize(), modelPath, h.VocabSize)
	}
	dim, hidden, L := int(h.Dim), int(h.HiddenDim), int(h.Layers)
	hd := dim / int(h.Heads)
	kvDim := int(h.KVHeads) * hd
	read := func(what string, n int) ([]float32, error) {
		buf := make([]float32, n)
		if err := binary.Read(f, binary.LittleEndian, buf); err != nil {
			if err == io.ErrUnexpectedEOF || err == io.EOF {
				return nil, fmt.Errorf("%s: truncated while reading %s (%d floats): the file is incomplete", modelPath, what, n)
			}
			return nil, fmt.Errorf("%s: reading %s: %v", modelPath, what, err)
		}
		return buf, nil
	}
	type array struct {
		name string
		n    int
	}
	order := []array{
		{"token_embedding", int(h.VocabSize) * dim}, {"rms_att", L * dim}, {"wq", L * dim * dim}, {"wk", L * kvDim * dim},
		{"wv", L * kvDim * dim}, {"wo", L * dim * dim}, {"rms_ffn", L * dim}, {"w1", L * hidden * dim},
		{"w2", L * dim * hidden}, {"w3", L * hidden * dim}, {"rms_final", dim},
		{"freq_cis", int(h.SeqLen) * hd}, // real and imaginary halves; unused, RoPE is recomputed
	}
	w := map[string][]float32{}
	for _, a := range order {
		if w[a.name], err = read(a.name, a.n); err != nil {
			return err
		}
	}
	if !shared {
		if w["classifier"], err = read("classifier", int(h.VocabSize)*dim); err != nil {
			return err
		}
	}
	var tensors []safetensors.Tensor
	add := func(name string, data []float32, shape ...int64) {
		tensors = append(tensors, safetensors.Tensor{Name: name, DType: "F32", Shape: shape, Data: safetensors.F32Bytes(data)})
	}
	slice := func(key string, i, n int) []float32 { return w[key][i*n : (i+1)*n] }
	add("model.embed_tokens.weight", w["token_embedding"], int64(h.VocabSize), int64(dim))
	for i := 0; i < L; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		add(p+"input_layernorm.weight", slice("rms_att", i, dim), int64(dim))
		add(p+"post_attention_layernorm.weight", slice("rms_ffn", i, dim), int64(dim))
		add(p+"self_attn.q_proj.weight", interleavedToHalves(slice("wq", i, dim*dim), int(h.Heads), hd, dim), int64(dim), int64(dim))
		add(p+"self_attn.k_proj.weight", interleavedToHalves(slice("wk", i, kvDim*dim), int(h.KVHeads), hd, dim), int64(kvDim), int64(dim))
		add(p+"self_attn.v_proj.weight", slice("wv", i, kvDim*dim), int64(kvDim), int64(dim))
		add(p+"self_attn.o_proj.weight", slice("wo", i, dim*dim), int64(dim), int64(dim))
		add(p+"mlp.gate_proj.weight", slice("w1", i, hidden*dim), int64(hidden), int64(dim))
		add(p+"mlp.down_proj.weight", slice("w2", i, dim*hidden), int64(dim), int64(hidden))
		add(p+"mlp.up_proj.weight", slice("w3", i, hidden*dim), int64(hidden), int64(dim))
	}
	add("model.norm.weight", w["rms_final"], int64(dim))
	if !shared {
		add("lm_head.weight", w["classifier"], int64(h.VocabSize), int64(dim))
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	cfg := map[string]any{
		"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
		"hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": L,
		"num_attention_heads": h.Heads, "num_key_value_heads": h.KVHeads, "vocab_size": h.VocabSize,
		"max_position_embeddings": h.SeqLen, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
		"tie_word_embeddings": shared, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
		"torch_dtype": "float32",
	}
	// llama2.c's sampler stops at BOS: its training data separates stories with BOS, so BOS also ends a text.
	gen := map[string]any{"bos_token_id": 1, "eos_token_id": []int{2, 1}}
	if err := writeJSON(filepath.Join(outDir, "config.json"), cfg); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(outDir, "generation_config.json"), gen); err != nil {
		return err
	}
	if err := safetensors.Write(filepath.Join(outDir, "model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(outDir, tokenizer.Llama2cFile), tokRaw)
}

// interleavedToHalves reorders the rows of a q or k projection from llama2.c's RoPE pairing (2i, 2i+1) to
// Hugging Face's (i, i + head_dim/2), per head, so Hugging Face's rotate_half gives the same rotation.
func interleavedToHalves(w []float32, heads, hd, cols int) []float32 {
	out := make([]float32, len(w))
	for hIdx := 0; hIdx < heads; hIdx++ {
		for i := 0; i < hd/2; i++ {
			for pair := 0; pair < 2; pair++ {
				src := hIdx*hd + 2*i + pair
				dst := hIdx*hd + pair*(hd/2) + i
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

func writeJSON(path string, v any) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(raw, '\n'))
}
