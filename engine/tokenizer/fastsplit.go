package tokenizer

import "unicode"

// The split regexes of Llama 3 and Qwen 2/3 (and keel's trained tokenizers) dominate encoding time in a
// backtracking engine. splitScanner matches them by hand, alternative by alternative, with the same result as
// the regex (FuzzFastSplit checks it against regexp2 on arbitrary text).
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// with \p{N} matched once ("digits" = 1, Qwen) or up to three times (Llama 3).
type splitScanner struct{ digits int }

// fastSplitPatterns maps the regex sources it replaces to their scanners.
var fastSplitPatterns = map[string]splitScanner{
	`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`: {digits: 3},
	`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`:      {digits: 1},
}

func isL(r rune) bool  { return unicode.IsLetter(r) }
func isN(r rune) bool  { return unicode.IsNumber(r) }
func isNL(r rune) bool { return r == '\r' || r == '\n' }

// matchAt returns the end of the match starting at i, or -1.
func (sc splitScanner) matchAt(rs []rune, i int) int {
	n := len(rs)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d), ASCII letters either case
	if rs[i] == '\'' && i+1 < n {
		lower := func(r rune) rune {
			if r >= 'A' && r <= 'Z' {
				return r + 32
			}
			return r
		}
		c := lower(rs[i+1])
		switch c {
		case 's', 't', 'm', 'd':
			return i + 2
		}
		if i+2 < n {
			c2 := lower(rs[i+2])
			if (c == 'r' || c == 'v') && c2 == 'e' || c == 'l' && c2 == 'l' {
				return i + 3
			}
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	{
		j := i
		if !isNL(rs[j]) && !isL(rs[j]) && !isN(rs[j]) && j+1 < n && isL(rs[j+1]) {
			j++
		}
		if isL(rs[j]) {
			for j < n && isL(rs[j]) {
				j++
			}
			return j
		}
	}
	// \p{N}{1,digits}
	if isN(rs[i]) {
		j := i
		for j < n && j-i < sc.digits && isN(rs[j]) {
			j++
		}
		return j
	}
	// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
	{
		j := i
		if rs[j] == ' ' {
			j++
		}
		other := func(r rune) bool { return !isJSSpace(r) && !isL(r) && !isN(r) }
		if j < n && other(rs[j]) {
			for j < n && other(rs[j]) {
				j++
			}
			for j < n && isNL(rs[j]) {
				j++
			}
			return j
		}
	}
	if !isJSSpace(rs[i]) {
		return -1
	}
	w := i // the whitespace run [i, w)
	lastNL := -1
	for w < n && isJSSpace(rs[w]) {
		if isNL(rs[w]) {
			lastNL = w
		}
		w++
	}
	// \s*[\r\n]+: the greedy \s* gives back until a line break can match; the match ends after the last one
	if lastNL >= 0 {
		return lastNL + 1
	}
	// \s+(?!\S): the whole run at the end of the text, else all but its last character
	if w == n {
		return w
	}
	if w-i >= 2 {
		return w - 1
	}
	// \s+
	return w
}

// split is jsRegex.split (regexSplit) for the scanned pattern.
func (sc splitScanner) split(text string) []string {
	rs := []rune(text)
	var out []string
	prev := 0
	for i := 0; i < len(rs); {
		end := sc.matchAt(rs, i)
		if end <= i {
			i++
			continue
		}
		if prev < i {
			out = append(out, string(rs[prev:i]))
		}
		out = append(out, string(rs[i:end]))
		prev, i = end, end
	}
	if prev < len(rs) {
		out = append(out, string(rs[prev:]))
	}
	return out
}
