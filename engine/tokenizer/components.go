package tokenizer

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// The normalizers, pre-tokenizers, post-processors and decoders of tokenizer.json, each as transformers.js
// implements it.

type component struct {
	Type string `json:"type"`
}

// pattern is tokenizer.json's {"String": s} or {"Regex": r}.
type pattern struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func (p pattern) compile() (*jsRegex, error) {
	switch {
	case p.Regex != nil:
		return compileJSRegex(*p.Regex)
	case p.String != nil:
		return literalRegex(*p.String), nil
	}
	return nil, fmt.Errorf("pattern needs String or Regex")
}

// ---- normalizers

type normalizer interface{ normalize(string) string }

type normalizerSeq []normalizer

func (s normalizerSeq) normalize(x string) string {
	for _, n := range s {
		x = n.normalize(x)
	}
	return x
}

type replaceNorm struct {
	re      *jsRegex
	content string
}

func (r replaceNorm) normalize(x string) string { return r.re.replaceAll(x, r.content) }

type unicodeNorm struct{ form norm.Form }

func (u unicodeNorm) normalize(x string) string { return u.form.String(x) }

type prependNorm string

func (p prependNorm) normalize(x string) string { return string(p) + x }

type lowercaseNorm struct{}

func (lowercaseNorm) normalize(x string) string { return strings.ToLower(x) }

type stripNorm struct{ left, right bool }

func (s stripNorm) normalize(x string) string {
	if s.left {
		x = jsTrimStart(x)
	}
	if s.right {
		x = jsTrimEnd(x)
	}
	return x
}

func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		component
		Normalizers []json.RawMessage `json:"normalizers"`
		Pattern     pattern           `json:"pattern"`
		Content     string            `json:"content"`
		Prepend     string            `json:"prepend"`
		Left        bool              `json:"left"`
		Right       bool              `json:"right"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var seq normalizerSeq
		for i, r := range c.Normalizers {
			n, err := parseNormalizer(r)
			if err != nil {
				return nil, fmt.Errorf("normalizers[%d]: %w", i, err)
			}
			if n != nil {
				seq = append(seq, n)
			}
		}
		return seq, nil
	case "Replace":
		re, err := c.Pattern.compile()
		if err != nil {
			return nil, err
		}
		return replaceNorm{re, c.Content}, nil
	case "NFC":
		return unicodeNorm{norm.NFC}, nil
	case "NFD":
		return unicodeNorm{norm.NFD}, nil
	case "NFKC":
		return unicodeNorm{norm.NFKC}, nil
	case "NFKD":
		return unicodeNorm{norm.NFKD}, nil
	case "Prepend":
		return prependNorm(c.Prepend), nil
	case "Lowercase":
		return lowercaseNorm{}, nil
	case "Strip":
		return stripNorm{c.Left, c.Right}, nil
	}
	return nil, fmt.Errorf("normalizer type %q is not supported", c.Type)
}

// ---- pre-tokenizers

type preTokenizer interface {
	split(words []string, section int) []string
}

type preSeq []preTokenizer

func (s preSeq) split(words []string, section int) []string {
	for _, p := range s {
		words = p.split(words, section)
	}
	return words
}

type splitPre struct {
	re      *jsRegex
	invert  bool
	removed bool
	fast    *splitScanner // a hand-written matcher for the pattern, when keel has one
}

func (p splitPre) split(words []string, _ int) []string {
	var out []string
	for _, w := range words {
		switch {
		case p.fast != nil && !p.invert && !p.removed:
			out = append(out, p.fast.split(w)...)
		case p.invert:
			out = append(out, p.re.matches(w)...)
		case p.removed:
			out = append(out, p.re.splitRemoved(w)...)
		default:
			out = append(out, p.re.split(w)...)
		}
	}
	return out
}

// gpt2Pattern is the ByteLevel pre-tokenizer's own split.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

type byteLevelPre struct {
	addPrefixSpace bool
	re             *jsRegex // nil when use_regex is false
}

func (p byteLevelPre) split(words []string, _ int) []string {
	var out []string
	for _, w := range words {
		if p.addPrefixSpace && !strings.HasPrefix(w, " ") {
			w = " " + w
		}
		pieces := []string{w}
		if p.re != nil {
			pieces = p.re.matches(w)
		}
		for _, piece := range pieces {
			out = append(out, byteLevelEncode(piece))
		}
	}
	return out
}

type metaspacePre struct {
	replacement, strRep string
	addPrefixSpace      bool
	prependScheme       string
}

func (p *metaspacePre) split(words []string, section int) []string {
	out := make([]string, 0, len(words))
	for _, w := range words {
		n := strings.ReplaceAll(w, " ", p.strRep)
		if p.addPrefixSpace && !strings.HasPrefix(n, p.replacement) && (p.prependScheme == "always" || p.prependScheme == "first" && section == 0) {
			n = p.strRep + n
		}
		out = append(out, n)
	}
	return out
}

type regexPre struct{ re *jsRegex }

func (p regexPre) split(words []string, _ int) []string {
	var out []string
	for _, w := range words {
		out = append(out, p.re.matches(w)...)
	}
	return out
}

type whitespaceSplitPre struct{}

func (whitespaceSplitPre) split(words []string, _ int) []string {
	var out []string
	for _, w := range words {
		out = append(out, strings.FieldsFunc(w, isJSSpace)...)
	}
	return out
}

func parsePreTokenizer(raw json.RawMessage) (preTokenizer, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		component
		Pretokenizers    []json.RawMessage `json:"pretokenizers"`
		Pattern          pattern           `json:"pattern"`
		Invert           bool              `json:"invert"`
		Behavior         string            `json:"behavior"`
		AddPrefixSpace   *bool             `json:"add_prefix_space"`
		UseRegex         *bool             `json:"use_regex"`
		Replacement      string            `json:"replacement"`
		StrRep           string            `json:"str_rep"`
		PrependScheme    string            `json:"prepend_scheme"`
		IndividualDigits bool              `json:"individual_digits"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var seq preSeq
		for i, r := range c.Pretokenizers {
			p, err := parsePreTokenizer(r)
			if err != nil {
				return nil, fmt.Errorf("pretokenizers[%d]: %w", i, err)
			}
			if p != nil {
				seq = append(seq, p)
			}
		}
		return seq, nil
	case "Split":
		var re *jsRegex
		var err error
		if c.Pattern.Regex != nil {
			re, err = compileJSRegex(*c.Pattern.Regex)
		} else {
			re, err = c.Pattern.compile()
		}
		if err != nil {
			return nil, err
		}
		// A String pattern is wrapped in a capturing group by transformers.js, so even "Removed" keeps it.
		removed := strings.EqualFold(c.Behavior, "removed") && c.Pattern.Regex != nil
		p := splitPre{re: re, invert: c.Invert, removed: removed}
		if c.Pattern.Regex != nil {
			if sc, ok := fastSplitPatterns[*c.Pattern.Regex]; ok {
				p.fast = &sc
			}
		}
		return p, nil
	case "ByteLevel":
		p := byteLevelPre{addPrefixSpace: c.AddPrefixSpace != nil && *c.AddPrefixSpace}
		if c.UseRegex == nil || *c.UseRegex {
			re, err := compileJSRegex(gpt2Pattern)
			if err != nil {
				return nil, err
			}
			p.re = re
		}
		return p, nil
	case "Metaspace":
		rep := c.StrRep
		if rep == "" {
			rep = c.Replacement
		}
		scheme := c.PrependScheme
		if scheme == "" {
			scheme = "always"
		}
		return &metaspacePre{replacement: c.Replacement, strRep: rep, addPrefixSpace: c.AddPrefixSpace != nil && *c.AddPrefixSpace, prependScheme: scheme}, nil
	case "Digits":
		src := `[^0-9]+|[0-9]+`
		if c.IndividualDigits {
			src = `[^0-9]+|[0-9]`
		}
		re, err := compileJSRegex(src)
		return regexPre{re}, err
	case "Whitespace":
		re, err := compileJSRegex(`[A-Za-z0-9_]+|[^A-Za-z0-9_\s]+`)
		return regexPre{re}, err
	case "WhitespaceSplit":
		return whitespaceSplitPre{}, nil
	}
	return nil, fmt.Errorf("pre-tokenizer type %q is not supported", c.Type)
}

// ---- post-processors

type postProcessor interface {
	process(toks []string, addSpecial bool) []string
}

type templatePost struct{ single []templateItem }

type templateItem struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

func (p templatePost) process(toks []string, addSpecial bool) []string {
	var out []string
	for _, it := range p.single {
		switch {
		case it.SpecialToken != nil:
			if addSpecial {
				out = append(out, it.SpecialToken.ID)
			}
		case it.Sequence != nil && it.Sequence.ID == "A":
			out = append(out, toks...)
		}
	}
	return out
}

type identityPost struct{}

func (identityPost) process(toks []string, _ bool) []string { return toks }

type postSeq []postProcessor

func (s postSeq) process(toks []string, addSpecial bool) []string {
	for _, p := range s {
		toks = p.process(toks, addSpecial)
	}
	return toks
}

type bertPost struct{ cls, sep string }

func (p bertPost) process(toks []string, addSpecial bool) []string {
	if !addSpecial {
		return toks
	}
	return append(append([]string{p.cls}, toks...), p.sep)
}

func parsePostProcessor(raw json.RawMessage) (postProcessor, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		component
		Single     []templateItem    `json:"single"`
		Processors []json.RawMessage `json:"processors"`
		Cls        []json.RawMessage `json:"cls"`
		Sep        []json.RawMessage `json:"sep"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	switch c.Type {
	case "TemplateProcessing":
		return templatePost{c.Single}, nil
	case "ByteLevel":
		return identityPost{}, nil
	case "Sequence":
		var seq postSeq
		for i, r := range c.Processors {
			p, err := parsePostProcessor(r)
			if err != nil {
				return nil, fmt.Errorf("processors[%d]: %w", i, err)
			}
			if p != nil {
				seq = append(seq, p)
			}
		}
		return seq, nil
	case "BertProcessing", "RobertaProcessing":
		var cls, sep string
		if len(c.Cls) > 0 {
			json.Unmarshal(c.Cls[0], &cls)
		}
		if len(c.Sep) > 0 {
			json.Unmarshal(c.Sep[0], &sep)
		}
		return bertPost{cls, sep}, nil
	}
	return nil, fmt.Errorf("post-processor type %q is not supported", c.Type)
}

// ---- decoders

// decoder turns tokens back into text. chain is the whole-sequence form (transformers.js's decode_chain);
// piece is one token's bytes for streaming (first: the token starts the text).
type decoder interface {
	chain(toks []string) []string
	piece(tok string, first bool) []byte
}

type decoderSeq []decoder

func (s decoderSeq) chain(toks []string) []string {
	for _, d := range s {
		toks = d.chain(toks)
	}
	return toks
}

func (s decoderSeq) piece(tok string, first bool) []byte {
	b := []byte(tok)
	for _, d := range s {
		b = d.piece(string(b), first)
	}
	return b
}

type replaceDec struct {
	re      *jsRegex
	content string
}

func (d replaceDec) chain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		out[i] = d.re.replaceAll(t, d.content)
	}
	return out
}

func (d replaceDec) piece(tok string, _ bool) []byte { return []byte(d.re.replaceAll(tok, d.content)) }

// byteToken reads "<0xNN>".
func byteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	v, err := strconv.ParseUint(t[3:5], 16, 8)
	return byte(v), err == nil
}

type byteFallbackDec struct{}

func (byteFallbackDec) chain(toks []string) []string {
	var out []string
	var pending []byte
	for _, t := range toks {
		if b, ok := byteToken(t); ok {
			pending = append(pending, b)
			continue
		}
		if len(pending) > 0 {
			out = append(out, decodeUTF8(pending))
			pending = nil
		}
		out = append(out, t)
	}
	if len(pending) > 0 {
		out = append(out, decodeUTF8(pending))
	}
	return out
}

func (byteFallbackDec) piece(tok string, _ bool) []byte {
	if b, ok := byteToken(tok); ok {
		return []byte{b}
	}
	return []byte(tok)
}

type fuseDec struct{}

func (fuseDec) chain(toks []string) []string    { return []string{strings.Join(toks, "")} }
func (fuseDec) piece(tok string, _ bool) []byte { return []byte(tok) }

type stripDec struct {
	content     string
	start, stop int
}

func (d stripDec) strip(t string, first, last bool) string {
	r := []rune(t)
	c := []rune(d.content)
	if len(c) != 1 {
		return t
	}
	lo, hi := 0, len(r)
	if first {
		for i := 0; i < d.start && i < len(r); i++ {
			if r[i] != c[0] {
				break
			}
			lo = i + 1
		}
	}
	if last {
		for i := 0; i < d.stop && len(r)-i-1 >= 0; i++ {
			idx := len(r) - i - 1
			if r[idx] != c[0] {
				break
			}
			hi = idx
		}
	}
	if lo > hi {
		return ""
	}
	return string(r[lo:hi])
}

func (d stripDec) chain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		out[i] = d.strip(t, true, true)
	}
	return out
}

// piece strips only at the start of the text: a stream cannot know which token is last.
func (d stripDec) piece(tok string, first bool) []byte {
	if !first {
		return []byte(tok)
	}
	return []byte(d.strip(tok, true, false))
}

type metaspaceDec struct {
	replacement    string
	addPrefixSpace bool
}

func (d metaspaceDec) chain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		n := strings.ReplaceAll(t, d.replacement, " ")
		if d.addPrefixSpace && i == 0 && strings.HasPrefix(n, " ") {
			n = n[1:]
		}
		out[i] = n
	}
	return out
}

func (d metaspaceDec) piece(tok string, first bool) []byte {
	n := strings.ReplaceAll(tok, d.replacement, " ")
	if d.addPrefixSpace && first && strings.HasPrefix(n, " ") {
		n = n[1:]
	}
	return []byte(n)
}

type byteLevelDec struct{ t *HF }

func (d byteLevelDec) chain(toks []string) []string {
	var out []string
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			out = append(out, decodeUTF8(byteLevelDecode(strings.Join(cur, ""))))
			cur = nil
		}
	}
	for _, t := range toks {
		if _, ok := d.t.added[t]; ok {
			flush()
			out = append(out, t)
		} else {
			cur = append(cur, t)
		}
	}
	flush()
	return out
}

func (d byteLevelDec) piece(tok string, _ bool) []byte {
	if _, ok := d.t.added[tok]; ok {
		return []byte(tok)
	}
	return byteLevelDecode(tok)
}

type bpeSuffixDec struct{ suffix string }

func (d bpeSuffixDec) chain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		rep := " "
		if i == len(toks)-1 {
			rep = ""
		}
		out[i] = strings.ReplaceAll(t, d.suffix, rep)
	}
	return out
}

func (d bpeSuffixDec) piece(tok string, _ bool) []byte {
	return []byte(strings.ReplaceAll(tok, d.suffix, " "))
}

func parseDecoder(raw json.RawMessage, t *HF) (decoder, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c struct {
		component
		Decoders       []json.RawMessage `json:"decoders"`
		Pattern        pattern           `json:"pattern"`
		Content        string            `json:"content"`
		Start          int               `json:"start"`
		Stop           int               `json:"stop"`
		Replacement    string            `json:"replacement"`
		AddPrefixSpace *bool             `json:"add_prefix_space"`
		PrependScheme  string            `json:"prepend_scheme"`
		Suffix         string            `json:"suffix"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var seq decoderSeq
		for i, r := range c.Decoders {
			d, err := parseDecoder(r, t)
			if err != nil {
				return nil, fmt.Errorf("decoders[%d]: %w", i, err)
			}
			if d != nil {
				seq = append(seq, d)
			}
		}
		return seq, nil
	case "Replace":
		re, err := c.Pattern.compile()
		if err != nil {
			return nil, err
		}
		return replaceDec{re, c.Content}, nil
	case "ByteFallback":
		return byteFallbackDec{}, nil
	case "Fuse":
		return fuseDec{}, nil
	case "Strip":
		if utf8.RuneCountInString(c.Content) != 1 {
			return nil, fmt.Errorf("Strip content %q must be one character", c.Content)
		}
		return stripDec{c.Content, c.Start, c.Stop}, nil
	case "Metaspace":
		return metaspaceDec{c.Replacement, c.AddPrefixSpace != nil && *c.AddPrefixSpace}, nil
	case "ByteLevel":
		return byteLevelDec{t}, nil
	case "BPEDecoder":
		return bpeSuffixDec{c.Suffix}, nil
	}
	return nil, fmt.Errorf("decoder type %q is not supported", c.Type)
}

// ---- GPT-2's byte <-> unicode table

var byteToRune, runeToByte = func() ([256]rune, map[rune]byte) {
	var b2r [256]rune
	r2b := map[rune]byte{}
	var bs []int
	for c := '!'; c <= '~'; c++ {
		bs = append(bs, int(c))
	}
	for c := '¡'; c <= '¬'; c++ {
		bs = append(bs, int(c))
	}
	for c := '®'; c <= 'ÿ'; c++ {
		bs = append(bs, int(c))
	}
	seen := map[int]bool{}
	for _, b := range bs {
		seen[b] = true
		b2r[b] = rune(b)
	}
	n := 0
	for b := 0; b < 256; b++ {
		if !seen[b] {
			b2r[b] = rune(256 + n)
			n++
		}
	}
	for b, r := range b2r {
		r2b[r] = byte(b)
	}
	return b2r, r2b
}()

func byteLevelEncode(s string) string {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		sb.WriteRune(byteToRune[s[i]])
	}
	return sb.String()
}

// byteLevelDecode maps each character back to its byte; a character outside the table becomes a 0 byte, as in
// transformers.js (its lookup yields undefined, which a Uint8Array stores as 0).
func byteLevelDecode(s string) []byte {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		if b, ok := runeToByte[r]; ok {
			out = append(out, b)
		} else {
			out = append(out, 0)
		}
	}
	return out
}
