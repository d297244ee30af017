package tokenizer

import (
	"fmt"
	"strings"
	"time"

	"github.com/dlclark/regexp2"
)

// Hugging Face tokenizer.json files carry Python regexes that transformers.js runs as JavaScript "gu" regexes.
// keel runs them with regexp2 (a backtracking engine with lookaround) after rewriting the escapes whose meaning
// differs between engines, so that matches are JavaScript's.

// jsSpace is JavaScript's \s: WhiteSpace and LineTerminator code points.
const jsSpace = `\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff`

// problematicRegex are rewrites transformers.js applies before compiling (JavaScript has no (?i:...) groups).
var problematicRegex = [][2]string{
	{`(?i:'s|'t|'re|'ve|'m|'ll|'d)`, `(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))`},
}

// translateJSRegex rewrites \s \S \d \D \w \W to their JavaScript meanings (Unicode whitespace; ASCII digits and
// word characters) (the rest of the syntax means the same in both).
func translateJSRegex(src string) (string, error) {
	for _, r := range problematicRegex {
		src = strings.ReplaceAll(src, r[0], r[1])
	}
	var b strings.Builder
	inClass := false
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '\\' && i+1 < len(src):
			e := src[i+1]
			i++
			switch e {
			case 's':
				if inClass {
					b.WriteString(jsSpace)
				} else {
					b.WriteString("[" + jsSpace + "]")
				}
			case 'S':
				if inClass {
					return "", fmt.Errorf(`\S inside a character class is not supported`)
				}
				b.WriteString("[^" + jsSpace + "]")
			case 'd':
				if inClass {
					b.WriteString("0-9")
				} else {
					b.WriteString("[0-9]")
				}
			case 'D':
				if inClass {
					return "", fmt.Errorf(`\D inside a character class is not supported`)
				}
				b.WriteString("[^0-9]")
			case 'w':
				if inClass {
					b.WriteString("A-Za-z0-9_")
				} else {
					b.WriteString("[A-Za-z0-9_]")
				}
			case 'W':
				if inClass {
					return "", fmt.Errorf(`\W inside a character class is not supported`)
				}
				b.WriteString("[^A-Za-z0-9_]")
			default:
				b.WriteByte('\\')
				b.WriteByte(e)
			}
		case c == '[' && !inClass:
			inClass = true
			b.WriteByte(c)
			// A ']' right after '[' or '[^' is a literal in both dialects.
			if i+1 < len(src) && src[i+1] == '^' {
				b.WriteByte('^')
				i++
			}
		case c == ']' && inClass:
			inClass = false
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// jsRegex is a compiled pattern with JavaScript match semantics for the calls tokenizers make. A literal
// pattern (tokenizer.json's {"String": ...}) skips the regex engine.
type jsRegex struct {
	re  *regexp2.Regexp
	lit string
}

func compileJSRegex(src string) (*jsRegex, error) {
	t, err := translateJSRegex(src)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", src, err)
	}
	re, err := regexp2.Compile(t, regexp2.None)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", src, err)
	}
	if err := probeBacktracking(re); err != nil {
		return nil, fmt.Errorf("regex %q: %v", src, err)
	}
	// A match that still runs away on some text stops here; the rest of that text stays one piece.
	re.MatchTimeout = matchTimeout
	return &jsRegex{re: re}, nil
}

// matchTimeout bounds one regex match; probeTimeout bounds a load-time probe.
const (
	matchTimeout = 2 * time.Second
	probeTimeout = 250 * time.Millisecond
)

// backtrackingProbes are short runs of the characters tokenizer patterns repeat, each ending in one that breaks
// the run: a nested quantifier such as (a+)+$ takes exponential time on them, an ordinary pattern microseconds.
var backtrackingProbes = []string{
	strings.Repeat("a", 40) + "!", strings.Repeat(" ", 40) + "x", strings.Repeat("1", 40) + "x",
	strings.Repeat("a ", 20) + "!", strings.Repeat("\n", 40) + "x", strings.Repeat("aA1", 14) + "\u0301",
}

// probeBacktracking refuses a pattern that backtracks catastrophically, before it can hang tokenization.
func probeBacktracking(re *regexp2.Regexp) error {
	re.MatchTimeout = probeTimeout
	defer func() { re.MatchTimeout = 0 }()
	for _, p := range backtrackingProbes {
		m, err := re.FindStringMatch(p)
		for err == nil && m != nil {
			m, err = re.FindNextMatch(m)
		}
		if err != nil {
			return fmt.Errorf("backtracks catastrophically (over %v on a %d-character probe): this tokenizer.json cannot be tokenized safely", probeTimeout, len([]rune(p)))
		}
	}
	return nil
}

func literalRegex(s string) *jsRegex {
	return &jsRegex{re: regexp2.MustCompile(regexp2.Escape(s), regexp2.None), lit: s}
}

// match is one match as rune offsets into the text.
type match struct{ start, end int }

// findAll returns every match, left to right; an empty match advances one code point, as JavaScript's
// matchAll does with the u flag.
func (r *jsRegex) findAll(runes []rune) []match {
	var out []match
	m, err := r.re.FindRunesMatch(runes)
	for err == nil && m != nil {
		out = append(out, match{m.Index, m.Index + m.Length})
		m, err = r.re.FindNextMatch(m)
	}
	return out
}

// matches is String.prototype.match with the g flag: the matched substrings.
func (r *jsRegex) matches(text string) []string {
	if r.lit != "" {
		var out []string
		for n := strings.Count(text, r.lit); n > 0; n-- {
			out = append(out, r.lit)
		}
		return out
	}
	runes := []rune(text)
	var out []string
	for _, m := range r.findAll(runes) {
		out = append(out, string(runes[m.start:m.end]))
	}
	return out
}

// split keeps the delimiters as their own pieces (transformers.js's regexSplit).
func (r *jsRegex) split(text string) []string { return r.splitText(text, true) }

// splitRemoved drops the delimiters and empty pieces.
func (r *jsRegex) splitRemoved(text string) []string { return r.splitText(text, false) }

func (r *jsRegex) splitText(text string, keep bool) []string {
	var out []string
	if r.lit != "" {
		for {
			i := strings.Index(text, r.lit)
			if i < 0 {
				break
			}
			if i > 0 {
				out = append(out, text[:i])
			}
			if keep {
				out = append(out, r.lit)
			}
			text = text[i+len(r.lit):]
		}
		if text != "" {
			out = append(out, text)
		}
		return out
	}
	runes := []rune(text)
	prev := 0
	for _, m := range r.findAll(runes) {
		if prev < m.start {
			out = append(out, string(runes[prev:m.start]))
		}
		if keep && m.end > m.start {
			out = append(out, string(runes[m.start:m.end]))
		}
		prev = m.end
	}
	if prev < len(runes) {
		out = append(out, string(runes[prev:]))
	}
	return out
}

// replaceAll replaces every match with repl (no group references).
func (r *jsRegex) replaceAll(text, repl string) string {
	if r.lit != "" {
		return strings.ReplaceAll(text, r.lit, repl)
	}
	runes := []rune(text)
	ms := r.findAll(runes)
	if len(ms) == 0 {
		return text
	}
	var b strings.Builder
	prev := 0
	for _, m := range ms {
		b.WriteString(string(runes[prev:m.start]))
		b.WriteString(repl)
		prev = m.end
	}
	b.WriteString(string(runes[prev:]))
	return b.String()
}

// isJSSpace reports whether r is JavaScript whitespace (what String.prototype.trim removes).
func isJSSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000, 0xfeff:
		return true
	}
	return r >= 0x2000 && r <= 0x200a
}

func jsTrimStart(s string) string { return strings.TrimLeftFunc(s, isJSSpace) }
func jsTrimEnd(s string) string   { return strings.TrimRightFunc(s, isJSSpace) }
