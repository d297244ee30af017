// Package tokenizer turns text into token ids and back for every model the engine loads.
package tokenizer

import (
	"fmt"
	"os"
	"path/filepath"
	"unicode/utf8"
)

// Tokenizer is what the engine needs of a tokenizer.
type Tokenizer interface {
	// Encode tokenizes text; addSpecial adds the model's BOS (and whatever its post-processor adds).
	Encode(text string, addSpecial bool) []int
	// TokenBytes is the raw bytes token id contributes when it follows prev (-1 at the start of the text).
	TokenBytes(id, prev int) []byte
	// Piece is the token's vocabulary string, for display.
	Piece(id int) string
	VocabSize() int
	BOS() int // -1 when the model has none
}

// Decode turns ids into text: the tokenizer's own decoder when it has one, else the streaming decoder's output
// (invalid UTF-8 at the end dropped, as a stream would hold it back).
func Decode(t Tokenizer, ids []int) string {
	if d, ok := t.(interface{ Decode([]int) string }); ok {
		return d.Decode(ids)
	}
	s := NewStream(t)
	var out []byte
	for _, id := range ids {
		out = append(out, s.Next(id)...)
	}
	return string(out)
}

// Stream decodes one token at a time and never emits broken UTF-8: bytes of an incomplete character wait for the
// token that completes them.
type Stream struct {
	tok     Tokenizer
	prev    int
	pending []byte
}

// NewStream starts a decoder at the beginning of a text.
func NewStream(t Tokenizer) *Stream { return &Stream{tok: t, prev: -1} }

// NewStreamAfter starts a decoder for tokens that follow token prev (the last token of a prompt).
func NewStreamAfter(t Tokenizer, prev int) *Stream { return &Stream{tok: t, prev: prev} }

// Next returns the text that token id completes (possibly empty).
func (s *Stream) Next(id int) string {
	s.pending = append(s.pending, s.tok.TokenBytes(id, s.prev)...)
	s.prev = id
	n := validPrefix(s.pending)
	// Bytes that can never become a character (a sampled stray continuation byte, say) become U+FFFD, as a
	// whole-text decode makes them: what streams is always valid UTF-8.
	out := decodeUTF8(s.pending[:n])
	s.pending = append(s.pending[:0], s.pending[n:]...)
	return out
}

// Flush returns what is still held back, with invalid bytes replaced by U+FFFD.
func (s *Stream) Flush() string {
	out := decodeUTF8(s.pending)
	s.pending = s.pending[:0]
	return out
}

// validPrefix is the length of the longest prefix of b that does not end inside an incomplete UTF-8 sequence;
// invalid bytes that can never become valid are part of the prefix (the caller replaces them).
func validPrefix(b []byte) int {
	i := 0
	for i < len(b) {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			if !utf8.FullRune(b[i:]) {
				return i // may complete with the next token's bytes
			}
		}
		i += size
	}
	return i
}

// Load reads the tokenizer in a model folder.
func Load(dir string) (Tokenizer, error) {
	p := filepath.Join(dir, Llama2cFile)
	if _, err := os.Stat(p); err == nil {
		return LoadLlama2c(p)
	}
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err == nil {
		return LoadHF(dir)
	}
	return nil, fmt.Errorf("%s: no tokenizer found (expected tokenizer.json or %s)", dir, Llama2cFile)
}

// IsSpecial reports whether id is a special token of t (a template marker, BOS, EOS), for tokenizers that know.
func IsSpecial(t Tokenizer, id int) bool {
	if s, ok := t.(interface{ IsSpecial(int) bool }); ok {
		return s.IsSpecial(id)
	}
	return id == t.BOS()
}
