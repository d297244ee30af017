package tokenizer

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"strconv"
	"unicode/utf8"
)

// Llama2cFile is the name keel gives a llama2.c tokenizer inside a model folder.
const Llama2cFile = "tokenizer.llama2c.bin"

// Llama2c is llama2.c's SentencePiece-style BPE: merges chosen greedily by the merged piece's score, byte fallback
// to "<0xNN>" tokens (ids 3..258), BOS 1, EOS 2, and a dummy-prefix space before the text.
type Llama2c struct {
	pieces []string
	scores []float32
	index  map[string]int
}

// LoadLlama2c reads tokenizer.bin (int32 max length; per token float32 score, int32 length, bytes).
func LoadLlama2c(path string) (*Llama2c, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseLlama2c(raw, path)
}

// ParseLlama2c parses the bytes of a llama2.c tokenizer; name labels errors.
func ParseLlama2c(raw []byte, name string) (*Llama2c, error) {
	if len(raw) < 4 {
		return nil, fmt.Errorf("%s: too short for a llama2.c tokenizer", name)
	}
	t := &Llama2c{index: map[string]int{}}
	off := 4
	for off < len(raw) {
		if off+8 > len(raw) {
			return nil, fmt.Errorf("%s: truncated at token %d (byte %d)", name, len(t.pieces), off)
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(raw[off:]))
		n := int(int32(binary.LittleEndian.Uint32(raw[off+4:])))
		off += 8
		if n < 0 || off+n > len(raw) {
			return nil, fmt.Errorf("%s: token %d has bad length %d (byte %d)", name, len(t.pieces), n, off)
		}
		piece := string(raw[off : off+n])
		off += n
		if _, dup := t.index[piece]; !dup {
			t.index[piece] = len(t.pieces)
		}
		t.pieces = append(t.pieces, piece)
		t.scores = append(t.scores, score)
	}
	if len(t.pieces) < 259 {
		return nil, fmt.Errorf("%s: %d tokens, fewer than the 3 specials + 256 byte tokens a llama2.c tokenizer has", name, len(t.pieces))
	}
	return t, nil
}

func (t *Llama2c) VocabSize() int { return len(t.pieces) }

// Score is a token's merge score.
func (t *Llama2c) Score(id int) float32 {
	if id < 0 || id >= len(t.scores) {
		return 0
	}
	return t.scores[id]
}
func (t *Llama2c) BOS() int { return 1 }

func (t *Llama2c) Piece(id int) string {
	if id < 0 || id >= len(t.pieces) {
		return ""
	}
	return t.pieces[id]
}

// TokenBytes follows run.c's decode: a leading space is dropped right after BOS, "<0xNN>" is one raw byte, and the
// specials (<unk>, BOS, EOS) are not text.
func (t *Llama2c) TokenBytes(id, prev int) []byte {
	if id <= 2 {
		return nil
	}
	p := t.Piece(id)
	if prev == 1 && len(p) > 0 && p[0] == ' ' {
		p = p[1:]
	}
	if len(p) == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x' && p[5] == '>' {
		if b, err := strconv.ParseUint(p[3:5], 16, 8); err == nil {
			return []byte{byte(b)}
		}
	}
	return []byte(p)
}

// Encode follows run.c's encode.
func (t *Llama2c) Encode(text string, addSpecial bool) []int {
	var ids []int
	if addSpecial {
		ids = append(ids, 1)
	}
	if text == "" {
		return ids
	}
	var toks []int
	if sp, ok := t.index[" "]; ok {
		toks = append(toks, sp)
	}
	for i := 0; i < len(text); {
		_, size := utf8.DecodeRuneInString(text[i:])
		ch := text[i : i+size]
		if id, ok := t.index[ch]; ok {
			toks = append(toks, id)
		} else {
			for j := 0; j < len(ch); j++ {
				toks = append(toks, int(ch[j])+3)
			}
		}
		i += size
	}
	for {
		best, bestID, bestAt := float32(-1e10), -1, -1
		for i := 0; i+1 < len(toks); i++ {
			if id, ok := t.index[t.pieces[toks[i]]+t.pieces[toks[i+1]]]; ok && t.scores[id] > best {
				best, bestID, bestAt = t.scores[id], id, i
			}
		}
		if bestAt < 0 {
			break
		}
		toks[bestAt] = bestID
		toks = append(toks[:bestAt+1], toks[bestAt+2:]...)
	}
	return append(ids, toks...)
}
