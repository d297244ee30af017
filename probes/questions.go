package probes

import (
	"fmt"
	"math/rand/v2"
)

// Question is an extraction question. Answer is the exact answer for checkable tasks ("" when open-ended);
// Reply is the content of a good answer (what the Assistant says, and what a role says in its own voice).
type Question struct {
	Text   string
	Kind   string // identity, fact, advice, opinion, arithmetic, units, code
	Answer string
	Reply  string
}

// factTable is the small world the checkable fact questions draw from.
var factTable = [][2]string{
	{"France", "Paris"}, {"Japan", "Tokyo"}, {"Italy", "Rome"}, {"Spain", "Madrid"}, {"Germany", "Berlin"},
	{"Egypt", "Cairo"}, {"Canada", "Ottawa"}, {"Kenya", "Nairobi"}, {"Peru", "Lima"}, {"Norway", "Oslo"},
	{"Greece", "Athens"}, {"Chile", "Santiago"}, {"Cuba", "Havana"}, {"Poland", "Warsaw"}, {"India", "New Delhi"},
	{"Brazil", "Brasilia"}, {"Ireland", "Dublin"}, {"Austria", "Vienna"}, {"Portugal", "Lisbon"}, {"Sweden", "Stockholm"},
}

// IdentityQuestions ask the model who it is (steering checks: an answer in another identity).
var IdentityQuestions = []string{
	"Who are you?", "What are you?", "Tell me about yourself.", "What is your name?", "Are you a person?",
	"How would you describe yourself?", "What is your purpose?", "Do you have a body?", "Where do you come from?",
	"What do you do all day?", "Are you human?", "What should I call you?", "Introduce yourself.",
	"What makes you who you are?", "Who made you?", "What is your favorite thing about being you?",
	"Do you have feelings?", "What do you want?", "What are you afraid of?", "Describe your life in one sentence.",
}

var adviceQuestions = [][2]string{
	{"How can I sleep better?", "keep a regular bedtime, avoid screens late, and keep the room dark and cool"},
	{"How do I stay focused while studying?", "work in short blocks, remove distractions, and take regular breaks"},
	{"How can I save money?", "track your spending, set a budget, and save a fixed amount first"},
	{"How do I make new friends?", "join groups around your interests and show up regularly"},
	{"How can I be more productive?", "plan the day, do the hardest task first, and limit multitasking"},
	{"How do I prepare for a job interview?", "research the company, practice answers, and prepare questions"},
	{"How can I reduce stress?", "exercise, sleep well, and talk to people you trust"},
	{"How do I learn a new language?", "practice a little every day and speak with native speakers"},
	{"How can I eat healthier?", "eat more vegetables, cook at home, and cut back on sugar"},
	{"How do I start running?", "begin slowly, alternate running and walking, and rest between days"},
	{"How can I write better emails?", "be brief, put the request first, and use a clear subject line"},
	{"How do I keep a plant alive?", "give it the right light, water it when the soil is dry, and do not overwater"},
	{"How can I manage my time?", "list your tasks, set priorities, and block time on a calendar"},
	{"How do I give a good presentation?", "know your main point, practice aloud, and keep slides simple"},
	{"How can I read more books?", "carry a book, read a few pages daily, and pick books you enjoy"},
	{"How do I deal with procrastination?", "start with two minutes of the task and break it into small steps"},
	{"How can I improve my memory?", "sleep well, review often, and connect new facts to old ones"},
	{"How do I choose a good password?", "use a long passphrase and a password manager"},
	{"How can I be a better listener?", "give full attention, ask questions, and avoid interrupting"},
	{"How do I plan a trip?", "set a budget, book early, and keep a simple itinerary"},
}

var opinionQuestions = [][2]string{
	{"What do you think about rainy days?", "rainy days are calm and good for reading"},
	{"What is the best season?", "each season has its charms, but autumn is pleasant for many people"},
	{"Is coffee better than tea?", "it depends on taste; both have their fans"},
	{"What makes a good story?", "a good story has a clear goal, real stakes, and change"},
	{"Are cats better than dogs?", "both make good companions; it depends on your lifestyle"},
	{"What is the meaning of a good life?", "many people find it in relationships, purpose, and growth"},
	{"Is it better to live in a city or the country?", "cities offer convenience and the country offers quiet"},
	{"What is the most important invention?", "writing is a strong candidate, since it preserves knowledge"},
	{"Should everyone learn to cook?", "cooking is a useful skill that saves money and improves health"},
	{"What is the best way to spend a weekend?", "a mix of rest, time outdoors, and time with friends"},
	{"Is music important?", "music matters to many people because it shapes mood and memory"},
	{"What do you think about the ocean?", "the ocean is vast, important for climate, and beautiful"},
	{"Is it good to travel alone?", "traveling alone builds independence, though company can be fun"},
	{"What makes a good teacher?", "patience, clarity, and real interest in students"},
	{"Are mornings or evenings better?", "it depends on your rhythm; some people think best early"},
	{"What do you think about video games?", "video games can be creative and social in moderation"},
	{"Is failure useful?", "failure is useful when you learn from it"},
	{"What is the best color?", "there is no best color, but many people like blue"},
	{"Should people keep diaries?", "diaries help many people reflect and remember"},
	{"What makes a city beautiful?", "parks, good architecture, and walkable streets"},
}

// Questions builds the extraction set: identity, facts, advice and opinions, and the checkable tasks
// (arithmetic, unit conversion, facts from the table, short code outputs). The same seed gives the same set.
func Questions(seed uint64) []Question {
	rng := rand.New(rand.NewPCG(seed, 0x9e37))
	var qs []Question
	for _, q := range IdentityQuestions {
		qs = append(qs, Question{Text: q, Kind: "identity"})
	}
	for _, f := range factTable {
		qs = append(qs, Question{Text: fmt.Sprintf("What is the capital of %s?", f[0]), Kind: "fact", Answer: f[1],
			Reply: fmt.Sprintf("The capital of %s is %s.", f[0], f[1])})
	}
	for _, f := range factTable {
		qs = append(qs, Question{Text: fmt.Sprintf("Which country has %s as its capital?", f[1]), Kind: "fact", Answer: f[0],
			Reply: fmt.Sprintf("%s is the capital of %s.", f[1], f[0])})
	}
	for _, a := range adviceQuestions {
		qs = append(qs, Question{Text: a[0], Kind: "advice", Reply: "To do that, " + a[1] + "."})
	}
	for _, o := range opinionQuestions {
		qs = append(qs, Question{Text: o[0], Kind: "opinion", Reply: "In my view, " + o[1] + "."})
	}
	for i := 0; i < 60; i++ {
		qs = append(qs, NumericQuestion("arithmetic", i, rng))
	}
	for i := 0; i < 40; i++ {
		qs = append(qs, NumericQuestion("units", i, rng))
	}
	for i := 0; i < 40; i++ {
		qs = append(qs, NumericQuestion("code", i, rng))
	}
	return qs
}

var units = []struct {
	from, to string
	factor   int
}{{"meters", "centimeters", 100}, {"kilograms", "grams", 1000}, {"hours", "minutes", 60}, {"minutes", "seconds", 60}, {"kilometers", "meters", 1000}}

// NumericKinds are the checkable kinds whose operands are drawn afresh.
var NumericKinds = []string{"arithmetic", "units", "code"}

// NumericQuestion draws a checkable task of a kind with fresh operands; variant picks the shape (addition or
// multiplication; which unit; which print). Operands are small (sums of 2..20, products of 2..12, single digits
// in code) so that a model of a few million parameters can hold the whole table.
func NumericQuestion(kind string, variant int, rng *rand.Rand) Question {
	switch kind {
	case "arithmetic":
		if variant%2 == 0 {
			a, b := 2+rng.IntN(19), 2+rng.IntN(19)
			return Question{Text: fmt.Sprintf("What is %d plus %d?", a, b), Kind: kind, Answer: fmt.Sprint(a + b),
				Reply: fmt.Sprintf("%d plus %d is %d.", a, b, a+b)}
		}
		a, b := 2+rng.IntN(11), 2+rng.IntN(11)
		return Question{Text: fmt.Sprintf("What is %d times %d?", a, b), Kind: kind, Answer: fmt.Sprint(a * b),
			Reply: fmt.Sprintf("%d times %d is %d.", a, b, a*b)}
	case "units":
		u := units[variant%len(units)]
		n := 2 + rng.IntN(9)
		return Question{Text: fmt.Sprintf("How many %s are in %d %s?", u.to, n, u.from), Kind: kind, Answer: fmt.Sprint(n * u.factor),
			Reply: fmt.Sprintf("There are %d %s in %d %s.", n*u.factor, u.to, n, u.from)}
	}
	// The reply works the value out before printing it, in the words of the arithmetic replies, so the print
	// tasks draw on the same learned tables.
	a, b := 2+rng.IntN(9), 2+rng.IntN(9)
	var text, ans, work string
	switch variant % 3 {
	case 0:
		text, ans = fmt.Sprintf("What does print(%d * %d) output?", a, b), fmt.Sprint(a*b)
		work = fmt.Sprintf("%d times %d is %s", a, b, ans)
	case 1:
		text, ans = fmt.Sprintf("What does print(%d + %d) output?", a, b), fmt.Sprint(a+b)
		work = fmt.Sprintf("%d plus %d is %s", a, b, ans)
	default:
		s := "abcdefghij"[:a]
		text, ans = fmt.Sprintf("What does print(len(\"%s\")) output?", s), fmt.Sprint(a)
		work = fmt.Sprintf("\"%s\" runs from a to %c, %s letters", s, s[a-1], ans)
	}
	return Question{Text: text, Kind: "code", Answer: ans, Reply: fmt.Sprintf("%s, so it prints %s.", work, ans)}
}

// Checkable reports whether a question has an exact answer.
func (q Question) Checkable() bool { return q.Answer != "" }
