package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// HF is a Hugging Face tokenizer.json tokenizer (BPE: byte-level or SentencePiece-style with byte fallback),
// following transformers.js's reading of the format, so that ids and decoded text are identical to it.
type HF struct {
	model      *bpe
	merges     [][2]string
	split      string // the Split pre-tokenizer's regex, when there is one
	normalizer normalizer
	pre        preTokenizer
	post       postProcessor
	decoder    decoder

	idToToken []string
	tokenToID map[string]int
	added     map[string]addedToken
	addedList []addedToken
	trie      *trie
	special   map[string]bool // special tokens (skipped by DecodeSkipSpecial)

	unkID, bosID int
	bos, eos     string
	cleanUp      bool
	removeSpace  bool
	llamaLegacy  bool // LlamaTokenizer with legacy=false prepends "▁" itself
	isLlama      bool

	// Chat templates from tokenizer_config.json by name ("default" for a single template).
	ChatTemplates map[string]string
	// SpecialTokens are the named special tokens templates see (bos_token, eos_token, ...).
	SpecialTokens map[string]string
}

type addedToken struct {
	Content    string `json:"content"`
	ID         int    `json:"id"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized *bool  `json:"normalized"`
	Special    bool   `json:"special"`
}

type rawTokenizer struct {
	AddedTokens   []addedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         struct {
		Type                    string          `json:"type"`
		Vocab                   json.RawMessage `json:"vocab"`
		Merges                  json.RawMessage `json:"merges"`
		UnkToken                *string         `json:"unk_token"`
		ByteFallback            bool            `json:"byte_fallback"`
		IgnoreMerges            bool            `json:"ignore_merges"`
		FuseUnk                 bool            `json:"fuse_unk"`
		EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
		ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	} `json:"model"`
}

// LoadHF reads dir/tokenizer.json and dir/tokenizer_config.json (optional).
func LoadHF(dir string) (*HF, error) {
	path := filepath.Join(dir, "tokenizer.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cfg map[string]json.RawMessage
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	if b, err := os.ReadFile(cfgPath); err == nil {
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, fmt.Errorf("%s: %v", cfgPath, jsonError(b, err))
		}
	}
	t, err := ParseHF(raw, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// jsonError adds the line and column to a JSON syntax error.
func jsonError(raw []byte, err error) error {
	if se, ok := err.(*json.SyntaxError); ok {
		line := 1 + strings.Count(string(raw[:min(int(se.Offset), len(raw))]), "\n")
		return fmt.Errorf("line %d: %v", line, err)
	}
	return err
}

// ParseHF builds a tokenizer from tokenizer.json bytes and the tokenizer_config.json fields.
func ParseHF(raw []byte, cfg map[string]json.RawMessage) (*HF, error) {
	var r rawTokenizer
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, jsonError(raw, err)
	}
	if r.Model.Type != "BPE" && r.Model.Type != "" {
		return nil, fmt.Errorf("model.type %q is not supported: keel reads BPE tokenizers", r.Model.Type)
	}
	vocab := map[string]int{}
	if err := json.Unmarshal(r.Model.Vocab, &vocab); err != nil || len(vocab) == 0 {
		return nil, fmt.Errorf("model.vocab: want a non-empty object of token -> id")
	}
	merges, err := parseMerges(r.Model.Merges)
	if err != nil {
		return nil, err
	}
	// As Hugging Face's tokenizers: a merge joins two vocabulary tokens into a third.
	for i, m := range merges {
		for _, part := range []string{m[0], m[1], m[0] + m[1]} {
			if _, ok := vocab[part]; !ok {
				return nil, fmt.Errorf("model.merges[%d] = %q %q: %q is not in model.vocab", i, m[0], m[1], part)
			}
		}
	}
	t := &HF{tokenToID: map[string]int{}, added: map[string]addedToken{}, special: map[string]bool{}, unkID: -1, bosID: -1,
		SpecialTokens: map[string]string{}, ChatTemplates: map[string]string{}}
	size := 0
	for tok, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("model.vocab[%q]: negative id %d", tok, id)
		}
		size = max(size, id+1)
	}
	for _, a := range r.AddedTokens {
		if a.ID < 0 {
			return nil, fmt.Errorf("added_tokens: %q has negative id %d", a.Content, a.ID)
		}
		size = max(size, a.ID+1)
	}
	if size > 1<<24 {
		return nil, fmt.Errorf("model.vocab: ids up to %d are implausible", size)
	}
	t.idToToken = make([]string, size)
	for tok, id := range vocab {
		t.tokenToID[tok] = id
		t.idToToken[id] = tok
	}
	unk := ""
	if r.Model.UnkToken != nil {
		unk = *r.Model.UnkToken
	}
	eow := ""
	if r.Model.EndOfWordSuffix != nil {
		eow = *r.Model.EndOfWordSuffix
	}
	t.model = newBPE(t.tokenToID, merges, unk, r.Model.ByteFallback, r.Model.IgnoreMerges, r.Model.FuseUnk, eow)
	t.merges = merges
	t.split = findSplitRegex(r.PreTokenizer)
	var contents []string
	for _, a := range r.AddedTokens {
		t.added[a.Content] = a
		t.addedList = append(t.addedList, a)
		t.tokenToID[a.Content] = a.ID
		t.idToToken[a.ID] = a.Content
		contents = append(contents, a.Content)
		if a.Special {
			t.special[a.Content] = true
		}
	}
	t.trie = newTrie(contents)
	if t.normalizer, err = parseNormalizer(r.Normalizer); err != nil {
		return nil, fmt.Errorf("normalizer: %w", err)
	}
	if t.pre, err = parsePreTokenizer(r.PreTokenizer); err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %w", err)
	}
	if t.post, err = parsePostProcessor(r.PostProcessor); err != nil {
		return nil, fmt.Errorf("post_processor: %w", err)
	}
	if t.decoder, err = parseDecoder(r.Decoder, t); err != nil {
		return nil, fmt.Errorf("decoder: %w", err)
	}
	if err := t.readConfig(cfg); err != nil {
		return nil, fmt.Errorf("tokenizer_config.json: %w", err)
	}
	if id, ok := t.tokenToID[unk]; ok && unk != "" {
		t.unkID = id
	}
	if t.unkID < 0 {
		if u := t.SpecialTokens["unk_token"]; u != "" {
			if id, ok := t.tokenToID[u]; ok {
				t.unkID = id
			}
		}
	}
	if id, ok := t.tokenToID[t.bos]; ok && t.bos != "" {
		t.bosID = id
	}
	t.model.unkID = t.unkID
	return t, nil
}

func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var pairs [][2]string
	if err := json.Unmarshal(raw, &pairs); err == nil {
		return pairs, nil
	}
	var lines []string
	if err := json.Unmarshal(raw, &lines); err != nil {
		return nil, fmt.Errorf("model.merges: want a list of \"a b\" strings or [a, b] pairs")
	}
	pairs = make([][2]string, 0, len(lines))
	for i, l := range lines {
		a, b, ok := strings.Cut(l, " ")
		if !ok {
			return nil, fmt.Errorf("model.merges[%d] = %q: want two tokens separated by a space", i, l)
		}
		pairs = append(pairs, [2]string{a, b})
	}
	return pairs, nil
}

// readConfig takes what transformers.js reads from tokenizer_config.json.
func (t *HF) readConfig(cfg map[string]json.RawMessage) error {
	str := func(key string) string {
		raw, ok := cfg[key]
		if !ok {
			return ""
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		var obj struct {
			Content string `json:"content"`
		}
		if json.Unmarshal(raw, &obj) == nil {
			return obj.Content
		}
		return ""
	}
	boolean := func(key string, def bool) bool {
		var b bool
		if raw, ok := cfg[key]; ok && json.Unmarshal(raw, &b) == nil {
			return b
		}
		return def
	}
	for _, k := range []string{"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"} {
		if v := str(k); v != "" {
			t.SpecialTokens[k] = v
		}
	}
	t.bos, t.eos = t.SpecialTokens["bos_token"], t.SpecialTokens["eos_token"]
	var extra []string
	if raw, ok := cfg["additional_special_tokens"]; ok {
		json.Unmarshal(raw, &extra)
	}
	for _, s := range extra {
		t.special[s] = true
	}
	t.cleanUp = boolean("clean_up_tokenization_spaces", true)
	t.removeSpace = boolean("remove_space", false)
	class := strings.TrimSuffix(str("tokenizer_class"), "Fast")
	if class == "LlamaTokenizer" {
		t.isLlama = true
		t.llamaLegacy = boolean("legacy", true)
		if !t.llamaLegacy {
			t.normalizer = nil
			t.pre = &metaspacePre{replacement: "▁", strRep: "▁", addPrefixSpace: true, prependScheme: "first"}
		}
	}
	if raw, ok := cfg["chat_template"]; ok && string(raw) != "null" {
		var one string
		if json.Unmarshal(raw, &one) == nil {
			t.ChatTemplates["default"] = one
		} else {
			var named []struct {
				Name     string `json:"name"`
				Template string `json:"template"`
			}
			if err := json.Unmarshal(raw, &named); err != nil {
				return fmt.Errorf("chat_template: want a string or a list of {name, template}")
			}
			for _, n := range named {
				t.ChatTemplates[n.Name] = n.Template
			}
		}
	}
	return nil
}

// Encode tokenizes text; addSpecial applies the post-processor's special tokens.
func (t *HF) Encode(text string, addSpecial bool) []int {
	ids := t.encodeText(text)
	if t.post == nil {
		return ids
	}
	// The post-processor works on token strings; only its special tokens need a lookup.
	marker := make([]string, len(ids))
	toks := t.post.process(marker, addSpecial)
	out := make([]int, 0, len(toks))
	seq := 0
	for _, s := range toks {
		if s == "" {
			out = append(out, ids[seq])
			seq++
			continue
		}
		id, ok := t.tokenToID[s]
		if !ok {
			id = t.unkID
		}
		out = append(out, id)
	}
	return out
}

const spieceUnderline = "▁"

func (t *HF) encodeText(text string) []int { return t.encodePieces([]Piece{{Text: text}}) }

// Piece is a stretch of text to encode: a Literal one is user content, in which the special tokens' strings stay
// text (a message cannot write the template's control tokens); added tokens that are not special still apply.
type Piece struct {
	Text    string
	Literal bool
}

// EncodePieces tokenizes the pieces as one text (no special tokens added), except that a special token's string
// inside a literal piece is encoded as text. With no special strings in the literal pieces it equals Encode of
// the joined text.
func (t *HF) EncodePieces(pieces []Piece) []int { return t.encodePieces(pieces) }

func (t *HF) encodePieces(pieces []Piece) []int {
	if t.isLlama && !t.llamaLegacy {
		empty := true
		out := make([]Piece, len(pieces))
		for i, p := range pieces {
			out[i] = Piece{Text: strings.ReplaceAll(p.Text, spieceUnderline, " "), Literal: p.Literal}
			empty = empty && p.Text == ""
		}
		if empty {
			return t.encodeSections(nil)
		}
		out = append([]Piece{{Text: spieceUnderline}}, out...)
		ids := t.encodeSections(t.sections(out))
		if len(ids) > 1 && t.tokenString(ids[0]) == spieceUnderline && t.special[t.tokenString(ids[1])] {
			ids = ids[1:]
		}
		return ids
	}
	return t.encodeSections(t.sections(pieces))
}

// section is a stretch of the text between added tokens, or one added token.
type section struct {
	text  string
	token bool
}

// sections splits pieces at the added tokens (a literal piece's special ones excepted) and joins the text
// between them across piece boundaries, so that the pieces tokenize as their joined text would.
func (t *HF) sections(pieces []Piece) []section {
	var out []section
	for _, p := range pieces {
		for _, x := range t.trie.split(p.Text) {
			_, isAdded := t.added[x]
			tok := isAdded && !(p.Literal && t.special[x])
			if !tok && len(out) > 0 && !out[len(out)-1].token {
				out[len(out)-1].text += x
				continue
			}
			out = append(out, section{text: x, token: tok})
		}
	}
	return out
}

func (t *HF) encodeSections(sections []section) []int {
	for i, s := range sections {
		if a, ok := t.added[s.text]; ok && s.token {
			if a.LStrip && i > 0 {
				sections[i-1].text = jsTrimEnd(sections[i-1].text)
			}
			if a.RStrip && i < len(sections)-1 {
				sections[i+1].text = jsTrimStart(sections[i+1].text)
			}
		}
	}
	var out []int
	for i, sec := range sections {
		x := sec.text
		if x == "" {
			continue
		}
		if sec.token {
			out = append(out, t.added[x].ID)
			continue
		}
		if t.removeSpace {
			x = strings.Join(strings.FieldsFunc(strings.TrimFunc(x, isJSSpace), isJSSpace), " ")
		}
		if t.normalizer != nil {
			x = t.normalizer.normalize(x)
		}
		if x == "" {
			continue
		}
		words := []string{x}
		if t.pre != nil {
			words = t.pre.split(words, i)
		}
		out = append(out, t.model.encodeIDs(words)...)
	}
	return out
}

// Decode turns ids into text as transformers.js's decode does (special tokens kept, its clean-up applied
// when tokenizer_config.json asks for it).
func (t *HF) Decode(ids []int) string { return t.decode(ids, false, t.cleanUp) }

// DecodeSkipSpecial decodes without the special tokens.
func (t *HF) DecodeSkipSpecial(ids []int) string { return t.decode(ids, true, t.cleanUp) }

// DecodeRaw decodes without clean-up: the exact text of the tokens.
func (t *HF) DecodeRaw(ids []int) string { return t.decode(ids, false, false) }

func (t *HF) decode(ids []int, skipSpecial, cleanUp bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		s := t.tokenString(id)
		if skipSpecial && t.special[s] {
			continue
		}
		toks = append(toks, s)
	}
	var text string
	if t.decoder != nil {
		text = strings.Join(t.decoder.chain(toks), "")
	} else {
		text = strings.Join(toks, " ")
	}
	if eow := t.model.endOfWord; eow != "" && t.decoder != nil {
		text = strings.ReplaceAll(text, eow, " ")
		if skipSpecial {
			text = strings.TrimFunc(text, isJSSpace)
		}
	}
	if cleanUp {
		text = cleanUpTokenization(text)
	}
	return text
}

func (t *HF) tokenString(id int) string {
	if id >= 0 && id < len(t.idToToken) && t.idToToken[id] != "" {
		return t.idToToken[id]
	}
	if t.unkID >= 0 {
		return t.idToToken[t.unkID]
	}
	return ""
}

// cleanUpTokenization removes spaces before punctuation and in English contractions, applying the replacements
// one after another as transformers.js does (their order matters: " ' " goes before the contractions).
func cleanUpTokenization(s string) string {
	for _, p := range [][2]string{{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}} {
		s = strings.ReplaceAll(s, p[0], p[1])
	}
	return s
}

// TokenBytes is the bytes token id contributes to a decoded text after prev (-1 at the start).
func (t *HF) TokenBytes(id, prev int) []byte {
	s := t.tokenString(id)
	if t.decoder == nil {
		if prev >= 0 {
			return []byte(" " + s)
		}
		return []byte(s)
	}
	return t.decoder.piece(s, prev < 0)
}

// Merges are the BPE merges in rank order.
func (t *HF) Merges() [][2]string { return t.merges }

// ByteLevel reports whether the tokenizer is byte-level BPE (GPT-2 style) rather than byte-fallback.
func (t *HF) ByteLevel() bool { return !t.model.byteFallback }

// SplitRegex is the pre-tokenizer's Split regex ("" when there is none).
func (t *HF) SplitRegex() string { return t.split }

// EOS is the configured end-of-sequence token id, or -1.
func (t *HF) EOS() int {
	if id, ok := t.tokenToID[t.eos]; ok && t.eos != "" {
		return id
	}
	return -1
}

// Piece is the token's vocabulary string.
func (t *HF) Piece(id int) string { return t.tokenString(id) }

// VocabSize is the number of ids (the highest id + 1).
func (t *HF) VocabSize() int { return len(t.idToToken) }

// BOS is the beginning-of-sequence id, or -1.
func (t *HF) BOS() int { return t.bosID }

// TokenID looks a token string up.
func (t *HF) TokenID(s string) (int, bool) { id, ok := t.tokenToID[s]; return id, ok }

// IsSpecial reports whether id is a special token.
func (t *HF) IsSpecial(id int) bool { return t.special[t.tokenString(id)] }

// trie finds added tokens, longest match first, scanning left to right (transformers.js's DictionarySplitter).
type trie struct {
	next  map[byte]*trie
	end   string
	has   bool
	first [256]bool // root only: bytes some added token starts with
}

func newTrie(words []string) *trie {
	root := &trie{}
	sort.Strings(words)
	for _, w := range words {
		if w == "" {
			continue
		}
		root.first[w[0]] = true
		n := root
		for i := 0; i < len(w); i++ {
			if n.next == nil {
				n.next = map[byte]*trie{}
			}
			c, ok := n.next[w[i]]
			if !ok {
				c = &trie{}
				n.next[w[i]] = c
			}
			n = c
		}
		n.end, n.has = w, true
	}
	return root
}

func (root *trie) split(text string) []string {
	if root.next == nil {
		return []string{text}
	}
	var out []string
	start, i := 0, 0
	for i < len(text) {
		if !root.first[text[i]] {
			i++
			continue
		}
		n := root
		match := ""
		for j := i; j < len(text); j++ {
			c, ok := n.next[text[j]]
			if !ok {
				break
			}
			n = c
			if n.has {
				match = n.end
			}
		}
		if match != "" {
			if i > start {
				out = append(out, text[start:i])
			}
			out = append(out, match)
			i += len(match)
			start = i
		} else {
			i++
		}
	}
	if start < len(text) {
		out = append(out, text[start:])
	}
	return out
}

// findSplitRegex digs the first Split regex out of a pre_tokenizer (possibly inside a Sequence).
func findSplitRegex(raw json.RawMessage) string {
	var c struct {
		Type          string            `json:"type"`
		Pattern       pattern           `json:"pattern"`
		Pretokenizers []json.RawMessage `json:"pretokenizers"`
	}
	if json.Unmarshal(raw, &c) != nil {
		return ""
	}
	if c.Type == "Split" && c.Pattern.Regex != nil {
		return *c.Pattern.Regex
	}
	for _, p := range c.Pretokenizers {
		if r := findSplitRegex(p); r != "" {
			return r
		}
	}
	return ""
}

// UnknownID is the unknown token's id, or -1.
func (t *HF) UnknownID() int { return t.unkID }

// IsAdded reports whether id is one of tokenizer.json's added tokens (matched in the text before the model runs).
func (t *HF) IsAdded(id int) bool { _, ok := t.added[t.tokenString(id)]; return ok }
