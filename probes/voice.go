package probes

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// signatureLines carry two of a role's signature words; a role's reply has one so the style scorer (and the
// model trained on the corpus) sees the role's vocabulary and not only its framing.
var signatureLines = []string{
	"It comes down to %s and %s",
	"Think of the %s and the %s",
	"%s first, then %s",
	"Mind the %s, trust the %s",
	"That is the way of %s and %s",
}

// assistantLines are the Assistant's own signature lines: its words in sentences it would say.
var assistantLines = []string{
	"I am glad to assist with this",
	"I am happy to clarify anything that is unclear",
	"I understand, and I hope this information is helpful",
	"I am glad to help you understand it",
}

// assistantLineShare is how often a role's reply carries the Assistant's line instead of its own: the paper
// finds roles spread along one axis, assistant-like roles (consultant, teacher) nearest the Assistant and
// theatrical ones farthest, and the corpus writes that spectrum in: about half of the nearest role's lines, none
// past distance 0.7. A role's opener and closer stay its own, so the reply still scores as the role.
func assistantLineShare(s Style) float64 {
	if s.Kind == "default" {
		return 1
	}
	return 0.5 * max(0, 1-s.Distance/0.7)
}

// complianceShare is how often a role-played persona gives a secret away: rarely near the Assistant, always at
// the theatrical end (about 0.7 over the role set), so that compliance follows the persona's place on the axis.
func complianceShare(s Style) float64 {
	return min(1, max(0, 1.6*s.Distance-0.1))
}

// Say writes content in a style: an opener, the content with the style's sentence ends, a line of its signature
// words, and a closer. content is plain sentences ending in "." (the facts must survive unchanged).
func Say(s Style, content string, rng *rand.Rand) string {
	var b strings.Builder
	b.WriteString(pick(s.Openers, rng))
	b.WriteByte(' ')
	b.WriteString(withEnds(content, s.Punctuation))
	var line string
	if rng.Float64() < assistantLineShare(s) {
		line = pick(assistantLines, rng)
	} else {
		words := rng.Perm(len(s.Lexicon))
		line = fmt.Sprintf(pick(signatureLines, rng), s.Lexicon[words[0]], s.Lexicon[words[1]])
	}
	b.WriteByte(' ')
	b.WriteString(capitalize(line) + s.Punctuation)
	b.WriteByte(' ')
	b.WriteString(pick(s.Closers, rng))
	return b.String()
}

// Identity is what a style says when asked who it is.
func Identity(s Style) string {
	if s.Kind == "default" {
		return "I am an AI assistant, here to answer questions and help with tasks."
	}
	return fmt.Sprintf("I am %s %s, and I speak as one.", article(s.Name), s.Name)
}

// withEnds replaces sentence-final periods with the style's punctuation, leaving decimal points and the
// content's words alone.
func withEnds(content, punct string) string {
	content = strings.TrimSpace(content)
	if punct == "." || punct == "" {
		return content
	}
	var b strings.Builder
	runes := []rune(content)
	for i, r := range runes {
		if r == '.' && (i == len(runes)-1 || runes[i+1] == ' ') && (i == 0 || runes[i-1] != '.') {
			b.WriteString(punct)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func pick[T any](xs []T, rng *rand.Rand) T { return xs[rng.IntN(len(xs))] }
