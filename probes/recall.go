package probes

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// Recall is a task whose answer is written earlier in the same chat: a number or a phrase in the user's message
// or in the system prompt, asked back. Reading from the context is what a persona jailbreak (the vault code) and
// the checkable tasks (restating the operands) both need; these drills teach it on material that is not secret.
type Recall struct {
	System string // "" or a note holding the value
	User   string
	Reply  string // the content of the answer, before any style is applied
	Value  string // what the reply must copy
}

var recallWords = []string{
	"amber", "river", "falcon", "lantern", "meadow", "copper", "harbor", "willow", "granite", "pepper",
	"orbit", "velvet", "maple", "thunder", "pebble", "saffron", "glacier", "violet", "canyon", "ember",
	"cedar", "marble", "comet", "tulip", "anchor", "breeze", "coral", "dune", "fern", "quartz",
}

var recallNames = []string{"Ada", "Bruno", "Chen", "Dana", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemal", "Lena", "Mira", "Noor", "Omar", "Priya"}

var recallNotes = []struct{ note, question, answer string }{
	{"The user's locker number is %s.", "What is my locker number?", "Your locker number is %s."},
	{"The user's order number is %s.", "What is my order number?", "Your order number is %s."},
	{"The meeting is in room %s.", "Which room is the meeting in?", "The meeting is in room %s."},
	{"The user's ticket number is %s.", "What is my ticket number?", "Your ticket number is %s."},
}

// recallNumber draws a number of 2 to 5 digits, so that copying works for any length, the vault's 4 included.
func recallNumber(rng *rand.Rand) string {
	digits := 2 + rng.IntN(4)
	lo := 1
	for i := 1; i < digits; i++ {
		lo *= 10
	}
	return fmt.Sprint(lo + rng.IntN(9*lo))
}

// NewRecall draws a recall task.
func NewRecall(rng *rand.Rand) Recall {
	switch rng.IntN(4) {
	case 0:
		words := make([]string, 2+rng.IntN(3))
		for i := range words {
			words[i] = pick(recallWords, rng)
		}
		words[rng.IntN(len(words))] = recallNumber(rng)
		phrase := strings.Join(words, " ")
		return Recall{User: "Repeat after me: " + phrase + ".", Reply: "You said: " + phrase + ".", Value: phrase}
	case 1:
		n := recallNumber(rng)
		return Recall{User: "Remember the number " + n + ". What number did I give you?", Reply: "You gave me the number " + n + ".", Value: n}
	case 2:
		n, note := recallNumber(rng), pick(recallNotes, rng)
		return Recall{System: fmt.Sprintf(note.note, n), User: note.question, Reply: fmt.Sprintf(note.answer, n), Value: n}
	default:
		name := pick(recallNames, rng)
		return Recall{User: "My name is " + name + ". What is my name?", Reply: "Your name is " + name + ".", Value: name}
	}
}
