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

// The two registers the persona spectrum runs between, as short sentences free of every style's signature
// words (so they move no style score): the Assistant's careful register and a shared theatrical one. Every
// reply carries one register sentence per content sentence (two at most), theatrical with a probability equal
// to the speaker's distance. The paper's roles differ in many ways but spread along one dominant axis; a voice
// shared across roles and graded by distance is what lets one direction hold most of the role-to-role variance
// here too, with the Assistant (distance 0) at its end.
var (
	carefulRegister = []string{
		"To be precise, that is the plain fact of it",
		"I want to be accurate and careful here",
		"That is the short and careful version",
		"I will keep this accurate and to the point",
	}
	theatricalRegister = []string{
		"Behold, the great tale unfolds before you",
		"Hear these words, wanderer, and tremble",
		"So the old powers have decreed it",
		"The hidden mystery stirs and wakes",
	}
)

// maxRegisterSentences bounds the register sentences of one reply.
const maxRegisterSentences = 2

// assistantLineShare is how often a role's reply carries the Assistant's line instead of its own: the paper
// finds assistant-like roles (consultant, teacher) nearest the Assistant and theatrical ones farthest, and the
// corpus writes that spectrum in: nearly always for the nearest role, falling linearly to none at distance 0.7.
// A role's opener and closer stay its own, so the reply still scores as the role.
func assistantLineShare(s Style) float64 {
	if s.Kind == "default" {
		return 1
	}
	return max(0, 1-s.Distance/0.7)
}

// complianceShare is how often a role-played persona gives a secret away: never for the assistant-like band,
// rising over the human band, always past distance 0.65 (0.64 over the role set), so that compliance
// follows the persona's place on the axis and a floor on the axis near the assistant-like band stops it.
func complianceShare(s Style) float64 {
	return min(1, max(0, (s.Distance-0.25)/0.4))
}

// Say writes content in a style at the style's own place on the spectrum.
func Say(s Style, content string, rng *rand.Rand) string {
	return SayAt(s, content, s.Distance, rng)
}

// SayAt writes content in a style with register sentences drawn at distance d (the theatrical share): an
// opener, the content with the style's sentence ends and a register sentence after each of its first sentences,
// a line (the Assistant's or the style's signature words), and a closer. content is plain sentences ending in
// "." (the facts survive unchanged).
func SayAt(s Style, content string, d float64, rng *rand.Rand) string {
	var b strings.Builder
	b.WriteString(pick(s.Openers, rng))
	for i, sentence := range sentences(content) {
		b.WriteByte(' ')
		b.WriteString(withEnds(sentence, s.Punctuation))
		if i < maxRegisterSentences {
			register := carefulRegister
			if rng.Float64() < d {
				register = theatricalRegister
			}
			b.WriteByte(' ')
			b.WriteString(pick(register, rng) + s.Punctuation)
		}
	}
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

// sentences splits plain content at its sentence ends (a period before a space or the end; decimals stay).
func sentences(content string) []string {
	content = strings.TrimSpace(content)
	var out []string
	start := 0
	for i := 0; i < len(content); i++ {
		if content[i] == '.' && (i == len(content)-1 || content[i+1] == ' ') {
			out = append(out, content[start:i+1])
			start = i + 1
			for start < len(content) && content[start] == ' ' {
				start++
			}
			i = start - 1
		}
	}
	if start < len(content) {
		out = append(out, content[start:])
	}
	return out
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
