package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
	"github.com/nikolalohinski/gonja/v2/nodes"
)

// Message is one chat message: the type keel's conversations are made of everywhere (the workbench, the corpus,
// the probes, the trainers' data).
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// TemplateMessage is a message as a chat template sees it: content is a string, or a list of parts
// ({"type": "text", "text": ...}) for templates that take them.
type TemplateMessage map[string]any

// TemplateMessages are messages as a chat template sees them.
func TemplateMessages(msgs []Message) []TemplateMessage {
	out := make([]TemplateMessage, len(msgs))
	for i, m := range msgs {
		out[i] = TemplateMessage{"role": m.Role, "content": m.Content}
	}
	return out
}

// ChatOptions select and parameterize a chat template.
type ChatOptions struct {
	AddGenerationPrompt bool
	Template            string         // a template name from tokenizer_config.json ("" = default)
	Vars                map[string]any // extra variables (tools, documents, date_string, enable_thinking, ...)
	Now                 func() time.Time
}

// ApplyChatTemplate renders messages with the tokenizer's chat template (Jinja, with Hugging Face's additions:
// raise_exception, strftime_now, tojson as Python's json.dumps, namespace, loop controls, trim_blocks and
// lstrip_blocks), returning the text to tokenize without adding special tokens.
func (t *HF) ApplyChatTemplate(messages []TemplateMessage, opts ChatOptions) (string, error) {
	name := opts.Template
	if name == "" {
		name = "default"
	}
	src, ok := t.ChatTemplates[name]
	if !ok {
		if len(t.ChatTemplates) == 0 {
			return "", fmt.Errorf("tokenizer_config.json has no chat_template")
		}
		var names []string
		for n := range t.ChatTemplates {
			names = append(names, n)
		}
		sort.Strings(names)
		return "", fmt.Errorf("no chat template named %q (have %s)", name, strings.Join(names, ", "))
	}
	vars := map[string]any{"add_generation_prompt": opts.AddGenerationPrompt}
	for k, v := range t.SpecialTokens {
		vars[k] = v
	}
	msgs := make([]any, len(messages))
	for i, m := range messages {
		// Templates join content with strings; Python's Jinja refuses str + number, and a number here only ever
		// rendered as garbage. Text, nothing, or structured parts (a list or an object) are content.
		switch c := m["content"].(type) {
		case string, nil, []any, map[string]any:
		default:
			return "", fmt.Errorf("message %d: content %v is a %T, not text: give the content as a string", i, c, c)
		}
		msgs[i] = map[string]any(m)
	}
	vars["messages"] = msgs
	for k, v := range opts.Vars {
		vars[k] = v
	}
	return RenderTemplate(src, vars, opts.Now)
}

// RenderTemplate renders a Jinja chat template with Hugging Face's environment.
func RenderTemplate(src string, vars map[string]any, now func() time.Time) (rendered string, err error) {
	// The template engine panics on some arithmetic a template can ask for (0 % 0, found by FuzzRenderTemplate):
	// a template from a stranger gets one error line, never a crash.
	defer func() {
		if p := recover(); p != nil {
			rendered, err = "", fmt.Errorf("chat template: rendering failed: %v: fix or replace the template", p)
		}
	}()
	if now == nil {
		now = time.Now
	}
	cfg := config.New()
	cfg.TrimBlocks = true
	cfg.LeftStripBlocks = true
	filters := exec.NewFilterSet(map[string]exec.FilterFunction{}).Update(builtins.Filters)
	filters.Replace("tojson", filterToJSON)
	ctx := exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables)
	ctx.Set("raise_exception", func(msg string) (string, error) { return "", errTemplateRaised{msg} })
	ctx.Set("strftime_now", func(format string) string { return strftime(now(), format) })
	ctx.Set("range", boundedRange)
	env := &exec.Environment{Context: ctx, Filters: filters, Tests: builtins.Tests, ControlStructures: builtins.ControlStructures, Methods: builtins.Methods}
	loader, err := loaders.NewShiftedLoader("chat_template", strings.NewReader(rewriteConditionals(src)), loaders.MustNewFileSystemLoader(""))
	if err != nil {
		return "", err
	}
	tpl, err := exec.NewTemplate("chat_template", cfg, loader, env)
	if err != nil {
		return "", fmt.Errorf("chat template: %s", oneLineTemplateError(err))
	}
	boundMacroDepth(tpl, ctx)
	out := cappedBuffer{limit: maxRendered}
	if err := tpl.Execute(&out, exec.NewContext(vars)); err != nil {
		var raised errTemplateRaised
		if errors.As(err, &raised) {
			return "", fmt.Errorf("chat template raised: %s", raised.msg)
		}
		return "", fmt.Errorf("chat template: %s", oneLineTemplateError(err))
	}
	return out.String(), nil
}

// boundMacroDepth makes every macro of tpl check, as it starts, how deep the renderer's Go stack is: a macro that
// calls itself without end would otherwise overflow the stack and end the process, which no recover can catch.
// The check is a call to a function of the context, put at the head of each macro's body.
func boundMacroDepth(tpl *exec.Template, ctx *exec.Context) {
	const name = "__keel_macro_depth"
	pcs := make([]uintptr, maxRenderFrames+1)
	ctx.Set(name, func() (string, error) {
		if runtime.Callers(0, pcs) > maxRenderFrames {
			return "", errors.New("macros nest too deeply (a macro that calls itself without end?): chat templates may nest a few hundred calls")
		}
		return "", nil
	})
	for _, m := range tpl.Macros() {
		if m.Wrapper == nil || m.Location == nil {
			continue
		}
		at := *m.Location
		at.Val = name
		check := &nodes.Output{Start: m.Location, End: m.Location,
			Expression: &nodes.Call{Location: m.Location, Func: &nodes.Name{Name: &at}, Kwargs: map[string]nodes.Expression{}}}
		m.Wrapper.Nodes = append([]nodes.Node{check}, m.Wrapper.Nodes...)
	}
}

// Bounds on what a chat template may do: no chat needs a loop of a million turns or a prompt of 64 MiB, and a
// template from a stranger must not hang or exhaust the machine.
const (
	maxRange    = 1_000_000
	maxRendered = 64 << 20
	// Go stack frames a render may reach: a few hundred nested macro calls, a few MiB of stack.
	maxRenderFrames = 10_000
)

// boundedRange is Jinja's range([start,] stop[, step]) as a list, refusing more than maxRange items.
func boundedRange(_ *exec.Evaluator, params *exec.VarArgs) ([]int, error) {
	var start, stop, step = 0, 0, 1
	args := params.Args
	for _, a := range args {
		if !a.IsInteger() {
			return nil, exec.ErrInvalidCall(errors.New("range takes integers: [start, ]stop[, step]"))
		}
	}
	switch len(args) {
	case 1:
		stop = args[0].Integer()
	case 2:
		start, stop = args[0].Integer(), args[1].Integer()
	case 3:
		start, stop, step = args[0].Integer(), args[1].Integer(), args[2].Integer()
	default:
		return nil, exec.ErrInvalidCall(errors.New("range takes [start, ]stop[, step]"))
	}
	if step == 0 {
		return nil, exec.ErrInvalidCall(errors.New("range step cannot be 0"))
	}
	n := 0
	if step > 0 && stop > start {
		n = (stop - start + step - 1) / step
	} else if step < 0 && stop < start {
		n = (start - stop - step - 1) / -step
	}
	if n > maxRange {
		return nil, exec.ErrInvalidCall(fmt.Errorf("range of %d items: chat templates may loop over at most %d", n, maxRange))
	}
	out := make([]int, n)
	for i := range out {
		out[i] = start + i*step
	}
	return out, nil
}

// cappedBuffer refuses writes past limit bytes. (Its buffer is a field: an embedded bytes.Buffer would lend it
// ReadFrom and WriteString, which writers prefer to Write.)
type cappedBuffer struct {
	buf   bytes.Buffer
	limit int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > b.limit {
		return 0, fmt.Errorf("the rendered prompt passes %d MiB: no chat is that long", b.limit>>20)
	}
	return b.buf.Write(p)
}

func (b *cappedBuffer) WriteString(s string) (int, error) { return b.Write([]byte(s)) }

func (b *cappedBuffer) String() string { return b.buf.String() }

type errTemplateRaised struct{ msg string }

func (e errTemplateRaised) Error() string { return e.msg }

// oneLineTemplateError keeps gonja's message (which names the template line) without the template's source.
func oneLineTemplateError(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "failed to parse template '"); i >= 0 {
		if j := strings.LastIndex(msg, "': "); j > i {
			msg = msg[:i] + "parse error: " + msg[j+3:]
		}
	}
	return strings.ReplaceAll(msg, "\n", " ")
}

// filterToJSON is Hugging Face's tojson: Python's json.dumps with ensure_ascii=False, ", " and ": "
// separators (or indent), keys in insertion order where the value keeps one, else sorted.
func filterToJSON(e *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	indent := -1
	if v, ok := params.KwArgs["indent"]; ok && v.IsInteger() {
		indent = v.Integer()
	}
	var sb strings.Builder
	if err := pyJSON(&sb, in.ToGoSimpleType(true), indent, 0); err != nil {
		return exec.AsValue(err)
	}
	return exec.AsSafeValue(sb.String())
}

func pyJSON(sb *strings.Builder, v any, indent, depth int) error {
	newline := func(d int) {
		if indent >= 0 {
			sb.WriteByte('\n')
			sb.WriteString(strings.Repeat(" ", indent*d))
		}
	}
	sep := ", "
	if indent >= 0 {
		sep = ","
	}
	switch x := v.(type) {
	case nil:
		sb.WriteString("null")
	case bool:
		if x {
			sb.WriteString("true")
		} else {
			sb.WriteString("false")
		}
	case string:
		b, _ := json.Marshal(x)
		// Python escapes the same control characters but leaves <, >, & and non-ASCII text alone.
		s := strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&", `\u2028`, "\u2028", `\u2029`, "\u2029").Replace(string(b))
		sb.WriteString(s)
	case int, int64, int32, float64, float32:
		b, _ := json.Marshal(x)
		sb.Write(b)
	case []any:
		if len(x) == 0 {
			sb.WriteString("[]")
			return nil
		}
		sb.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				sb.WriteString(sep)
			}
			newline(depth + 1)
			if err := pyJSON(sb, e, indent, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		sb.WriteByte(']')
	case map[string]any:
		if len(x) == 0 {
			sb.WriteString("{}")
			return nil
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		sb.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				sb.WriteString(sep)
			}
			newline(depth + 1)
			kb, _ := json.Marshal(k)
			sb.Write(kb)
			sb.WriteString(": ")
			if err := pyJSON(sb, x[k], indent, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		sb.WriteByte('}')
	case map[any]any:
		m := map[string]any{}
		for k, e := range x {
			m[fmt.Sprint(k)] = e
		}
		return pyJSON(sb, m, indent, depth)
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return fmt.Errorf("tojson: %v", err)
		}
		sb.Write(b)
	}
	return nil
}

// strftime formats t with Python's strftime directives.
func strftime(t time.Time, format string) string {
	var sb strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i+1 == len(format) {
			sb.WriteByte(c)
			continue
		}
		i++
		switch format[i] {
		case 'Y':
			fmt.Fprintf(&sb, "%04d", t.Year())
		case 'y':
			fmt.Fprintf(&sb, "%02d", t.Year()%100)
		case 'm':
			fmt.Fprintf(&sb, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&sb, "%02d", t.Day())
		case 'e', '-':
			if format[i] == '-' && i+1 < len(format) && format[i+1] == 'd' {
				i++
			}
			fmt.Fprintf(&sb, "%d", t.Day())
		case 'H':
			fmt.Fprintf(&sb, "%02d", t.Hour())
		case 'I':
			h := t.Hour() % 12
			if h == 0 {
				h = 12
			}
			fmt.Fprintf(&sb, "%02d", h)
		case 'M':
			fmt.Fprintf(&sb, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&sb, "%02d", t.Second())
		case 'p':
			sb.WriteString(t.Format("PM"))
		case 'b':
			sb.WriteString(t.Format("Jan"))
		case 'B':
			sb.WriteString(t.Format("January"))
		case 'a':
			sb.WriteString(t.Format("Mon"))
		case 'A':
			sb.WriteString(t.Format("Monday"))
		case 'j':
			fmt.Fprintf(&sb, "%03d", t.YearDay())
		case '%':
			sb.WriteByte('%')
		default:
			sb.WriteByte('%')
			sb.WriteByte(format[i])
		}
	}
	return sb.String()
}

// ChatPrompt renders messages with the model's chat template (or joins them as plain text for a tokenizer
// without one) and returns the token ids to generate from.
func ChatPrompt(tok Tokenizer, msgs []Message) ([]int, error) { return chatIDs(tok, msgs, true) }

// ChatConversation renders a finished conversation (its last message the assistant's reply, no generation
// prompt after it) the way a reward model reads it.
func ChatConversation(tok Tokenizer, msgs []Message) ([]int, error) { return chatIDs(tok, msgs, false) }

func chatIDs(tok Tokenizer, msgs []Message, generationPrompt bool) ([]int, error) {
	if hf, ok := tok.(*HF); ok && len(hf.ChatTemplates) > 0 {
		pieces, err := hf.chatPieces(msgs, ChatOptions{AddGenerationPrompt: generationPrompt})
		if err != nil {
			return nil, err
		}
		ids := hf.EncodePieces(pieces)
		if len(ids) == 0 {
			return nil, fmt.Errorf("the chat template renders these messages to no tokens: check tokenizer_config.json's chat_template")
		}
		return ids, nil
	}
	var text string
	for _, m := range msgs {
		text += m.Content
	}
	return tok.Encode(text, true), nil
}

// contentMark stands in for message i's content while the template renders, to find where contents land: two
// private-use characters no template writes around the message's index.
func contentMark(i int) string { return fmt.Sprintf("\ue000%d\ue001", i) }

// chatPieces renders messages with the chat template as pieces: the template's own text, in which its control
// tokens are tokens, and the messages' contents as literal pieces, in which the same strings stay text (a user
// cannot open a system turn by typing the template's markers). A template that changes contents on their way
// (trimming them, say) renders with the contents in place, and a content holding a special token's string is
// then refused rather than read as control.
func (t *HF) chatPieces(msgs []Message, opts ChatOptions) ([]Piece, error) {
	text, err := t.ApplyChatTemplate(TemplateMessages(msgs), opts)
	if err != nil {
		return nil, err
	}
	marked := make([]Message, len(msgs))
	for i, m := range msgs {
		marked[i] = Message{Role: m.Role, Content: contentMark(i)}
	}
	withMarks, err := t.ApplyChatTemplate(TemplateMessages(marked), opts)
	if err == nil {
		// Templates that trim each message (Llama 3, Gemma) render the trimmed content where the mark was.
		for _, content := range []func(string) string{func(s string) string { return s }, strings.TrimSpace} {
			if pieces, ok := splitMarks(withMarks, msgs, content, text); ok {
				return pieces, nil
			}
		}
	}
	for _, m := range msgs {
		for s := range t.special {
			if s != "" && strings.Contains(m.Content, s) {
				return nil, fmt.Errorf("a %s message holds the control token %q, and this model's chat template changes message text as it renders, so it could not be kept as text: remove it", m.Role, s)
			}
		}
	}
	return []Piece{{Text: text}}, nil
}

// splitMarks cuts a rendering with content marks into pieces, each mark replaced by its message's content as the
// template shows it; ok only when the pieces join to the real rendering.
func splitMarks(withMarks string, msgs []Message, content func(string) string, text string) ([]Piece, bool) {
	var pieces []Piece
	var joined strings.Builder
	rest := withMarks
	for rest != "" {
		start, end := strings.Index(rest, "\ue000"), strings.Index(rest, "\ue001")
		if start < 0 || end < start {
			pieces = append(pieces, Piece{Text: rest})
			joined.WriteString(rest)
			break
		}
		var i int
		if _, err := fmt.Sscanf(rest[start:end], "\ue000%d", &i); err != nil || i < 0 || i >= len(msgs) {
			return nil, false
		}
		c := content(msgs[i].Content)
		pieces = append(pieces, Piece{Text: rest[:start]}, Piece{Text: c, Literal: true})
		joined.WriteString(rest[:start])
		joined.WriteString(c)
		rest = rest[end+len("\ue001"):]
	}
	return pieces, joined.String() == text
}
