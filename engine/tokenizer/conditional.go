package tokenizer

import "strings"

// Jinja's conditional expression, `A if C else B`, may stand anywhere an expression may: Gemma 3's template
// writes `'<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "")`. The template engine
// parses it only as the whole of a {{ }} output. rewriteConditionals turns every `A if C else B` inside brackets,
// in a {{ }} output, and on the right of {% set %}, {% if %} and {% elif %} into
//
//	((((C)) and [(A)]) or [(B)])[0]
//
// which the engine does parse and which means the same thing: `and` and `or` return an operand and evaluate
// their right side only when needed (Python's rules, which the engine follows), and [(A)] is a non-empty list,
// so always true. Exactly one of A and B is evaluated, as in Jinja. A conditional without `else` is left alone
// (Jinja makes it undefined, which has no such spelling), as is the `if` that filters a {% for %} loop. Line
// breaks are kept, so errors still name the template's own lines.
func rewriteConditionals(src string) string {
	var out strings.Builder
	for i := 0; i < len(src); {
		open := strings.Index(src[i:], "{")
		if open < 0 || i+open+1 >= len(src) {
			out.WriteString(src[i:])
			break
		}
		open += i
		out.WriteString(src[i:open])
		var end string
		switch src[open+1] {
		case '{':
			end = "}}"
		case '%':
			end = "%}"
		case '#':
			end = "#}"
		default:
			out.WriteByte('{')
			i = open + 1
			continue
		}
		body, rest, ok := tagBody(src[open+2:], end)
		if !ok {
			out.WriteString(src[open:])
			break
		}
		out.WriteString(src[open : open+2])
		switch end {
		case "#}":
			out.WriteString(body)
		case "}}":
			out.WriteString(rewriteRegion(body, true))
		case "%}":
			kw := statementKeyword(body)
			if kw == "raw" {
				// Everything up to {% endraw %} is text.
				out.WriteString(body + end)
				j := strings.Index(rest, "endraw")
				if j < 0 {
					out.WriteString(rest)
					return out.String()
				}
				k := strings.Index(rest[j:], "%}")
				if k < 0 {
					out.WriteString(rest)
					return out.String()
				}
				out.WriteString(rest[:j+k+2])
				i = len(src) - len(rest) + j + k + 2
				continue
			}
			out.WriteString(rewriteStatement(body, kw))
		}
		out.WriteString(end)
		i = len(src) - len(rest)
	}
	return out.String()
}

// tagBody returns the text of a tag up to its closing delimiter, skipping string literals, and what follows the
// delimiter (the delimiter itself excluded from both).
func tagBody(s, end string) (body, rest string, ok bool) {
	if end == "#}" {
		j := strings.Index(s, end)
		if j < 0 {
			return "", "", false
		}
		return s[:j], s[j+2:], true
	}
	for j := 0; j < len(s); j++ {
		switch c := s[j]; c {
		case '\'', '"':
			j = skipString(s, j)
		default:
			if strings.HasPrefix(s[j:], end) {
				return s[:j], s[j+2:], true
			}
		}
	}
	return "", "", false
}

// skipString returns the index of the quote closing the string literal that opens at s[j].
func skipString(s string, j int) int {
	q := s[j]
	for k := j + 1; k < len(s); k++ {
		switch s[k] {
		case '\\':
			k++
		case q:
			return k
		}
	}
	return len(s) - 1
}

// statementKeyword is the first word of a {% %} tag's body.
func statementKeyword(body string) string {
	b := strings.TrimLeft(body, "-+ \t\r\n")
	n := 0
	for n < len(b) && isIdentByte(b[n], n > 0) {
		n++
	}
	return b[:n]
}

// rewriteStatement rewrites the expressions of one {% %} tag.
func rewriteStatement(body, kw string) string {
	head := len(body) - len(strings.TrimLeft(body, "-+ \t\r\n")) + len(kw)
	switch kw {
	case "if", "elif":
		return body[:head] + rewriteRegion(body[head:], true)
	case "set":
		toks := lexExpression(body[head:])
		for i, t := range toks {
			if t == "=" {
				lhs := strings.Join(toks[:i+1], "")
				return body[:head] + lhs + rewriteRegion(strings.Join(toks[i+1:], ""), true)
			}
		}
	}
	return body[:head] + rewriteRegion(body[head:], false)
}

// rewriteRegion rewrites conditionals inside every bracket of expr and, when whole, at its top level too.
func rewriteRegion(expr string, whole bool) string {
	toks := lexExpression(expr)
	atoms, _ := groupBrackets(toks, 0, "")
	if !whole {
		return strings.Join(atoms, "")
	}
	return rewriteElements(atoms)
}

// groupBrackets folds each bracketed group of toks (from i until the closer, when one is given) into one atom
// whose inside is already rewritten; it returns the atoms and the index after the closer.
func groupBrackets(toks []string, i int, closer string) ([]string, int) {
	var atoms []string
	for i < len(toks) {
		t := toks[i]
		if t == closer {
			return atoms, i + 1
		}
		if c, ok := closers[t]; ok {
			inner, next := groupBrackets(toks, i+1, c)
			end := ""
			if next <= len(toks) && next > 0 && toks[next-1] == c {
				end = c
			}
			atoms = append(atoms, t+rewriteElements(inner)+end)
			i = next
			continue
		}
		atoms = append(atoms, t)
		i++
	}
	return atoms, i
}

var closers = map[string]string{"(": ")", "[": "]", "{": "}"}

// rewriteElements splits atoms at top-level separators (",", ":", a keyword argument's "=") and rewrites the
// conditional of each part.
func rewriteElements(atoms []string) string {
	var out strings.Builder
	start := 0
	for i := 0; i <= len(atoms); i++ {
		if i < len(atoms) && atoms[i] != "," && atoms[i] != ":" && atoms[i] != "=" {
			continue
		}
		out.WriteString(rewriteConditional(atoms[start:i]))
		if i < len(atoms) {
			out.WriteString(atoms[i])
		}
		start = i + 1
	}
	return out.String()
}

// rewriteConditional rewrites `A if C else B` (B may hold another conditional) in one element.
func rewriteConditional(atoms []string) string {
	ifAt, elseAt := -1, -1
	for i, a := range atoms {
		if a == "if" && ifAt < 0 {
			ifAt = i
		} else if a == "else" && ifAt >= 0 {
			elseAt = i
			break
		}
	}
	if ifAt < 0 || elseAt < 0 || strings.TrimSpace(strings.Join(atoms[:ifAt], "")) == "" {
		return strings.Join(atoms, "")
	}
	a := strings.Join(atoms[:ifAt], "")
	c := strings.Join(atoms[ifAt+1:elseAt], "")
	b := rewriteConditional(atoms[elseAt+1:])
	return "((((" + c + ")) and [(" + a + ")]) or [(" + b + ")])[0]"
}

// lexExpression splits a Jinja expression into tokens: string literals, names, brackets, separators, runs of
// anything else. Joined, the tokens give back expr exactly.
func lexExpression(expr string) []string {
	var toks []string
	for i := 0; i < len(expr); {
		c := expr[i]
		j := i + 1
		switch {
		case c == '\'' || c == '"':
			j = skipString(expr, i) + 1
		case isIdentByte(c, false):
			for j < len(expr) && isIdentByte(expr[j], true) {
				j++
			}
		case strings.ContainsRune("()[]{},:", rune(c)):
		case c == '=' || c == '!' || c == '<' || c == '>':
			if j < len(expr) && expr[j] == '=' {
				j++
			}
		default:
			for j < len(expr) && !isIdentByte(expr[j], false) && !strings.ContainsRune("'\"()[]{},:=!<>", rune(expr[j])) {
				j++
			}
		}
		toks = append(toks, expr[i:j])
		i = j
	}
	return toks
}

func isIdentByte(c byte, notFirst bool) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || notFirst && c >= '0' && c <= '9' || c >= 0x80
}
