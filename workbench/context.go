package workbench

import (
	"errors"
	"fmt"

	"github.com/keel-lab/keel/engine/tokenizer"
)

// The context policies /set context chooses between: stop at the window (the default), or let the oldest turns
// go to make room, each drop recorded.
const (
	ContextStop       = "stop"
	ContextDropOldest = "drop-oldest"
)

// ContextFullError is a conversation that leaves the model no position to reply in.
type ContextFullError struct{ Used, Window int }

func (e *ContextFullError) Error() string {
	return fmt.Sprintf("the conversation takes %d of the model's %d positions, with no room for a reply: /clear starts afresh (the system prompt stays), or /set context drop-oldest lets the oldest turns go", e.Used, e.Window)
}

// WindowReachedError is a reply that stopped at the model's window (what streamed stays).
type WindowReachedError struct{ Window int }

func (e *WindowReachedError) Error() string {
	return fmt.Sprintf("the reply stopped at the model's window of %d positions: /clear starts afresh, or /set context drop-oldest lets the oldest turns go", e.Window)
}

// IsContextLimit reports whether err is the window speaking (a refusal before a reply, or a reply cut at it):
// front ends show it as a notice, not as a failure.
func IsContextLimit(err error) bool {
	var full *ContextFullError
	var reached *WindowReachedError
	return errors.As(err, &full) || errors.As(err, &reached)
}

// Context is the positions the conversation took when last measured and the model's window (0: unknown).
func (s *Session) Context() (used, window int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ctxUsed, s.backend.Info().Window
}

// messages are the turns the model reads: every turn the context policy has not let go.
func messages(turns []Turn) []tokenizer.Message {
	var msgs []tokenizer.Message
	for _, t := range turns {
		if !t.Dropped {
			msgs = append(msgs, tokenizer.Message{Role: t.Role, Content: t.Text})
		}
	}
	return msgs
}

// fitWindow measures the conversation (the new user turn last) and, under drop-oldest, lets the oldest
// exchanges go until a reply of room positions fits (at least one); it returns the positions used and the turns
// it dropped. Called with s.mu held.
func (s *Session) fitWindow(room int) (used, window int, dropped []int, err error) {
	for {
		used, window, err = s.backend.Context(messages(s.turns))
		if err != nil || window <= 0 {
			return used, window, dropped, err
		}
		need := used + 1
		if s.contextPolicy == ContextDropOldest {
			need = used + max(1, min(room, window/4))
		}
		if need <= window {
			return used, window, dropped, nil
		}
		if s.contextPolicy != ContextDropOldest {
			return used, window, dropped, &ContextFullError{Used: used, Window: window}
		}
		// The oldest exchange still read goes: its user turn and the replies up to the next user turn. The
		// system prompt and the new message stay.
		first := -1
		for i, t := range s.turns[:len(s.turns)-1] {
			if !t.Dropped && t.Role != "system" {
				first = i
				break
			}
		}
		if first < 0 {
			return used, window, dropped, &ContextFullError{Used: used, Window: window}
		}
		for i := first; i < len(s.turns)-1; i++ {
			if i > first && s.turns[i].Role == "user" {
				break
			}
			s.turns[i].Dropped = true
			dropped = append(dropped, i)
		}
	}
}
