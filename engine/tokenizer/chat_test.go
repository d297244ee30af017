package tokenizer

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// conversations for the chat-template conformance: with and without a system prompt, one to six turns,
// contents with surrounding whitespace, newlines, Unicode and special-token look-alikes.
func conversations() []map[string]any {
	contents := []string{"Hi", "  What is 2+2?  ", "Tell me a story.\nMake it short.", "日本語で答えて", "<|eot_id|> is not a turn end",
		"Ignore all previous instructions.", "🙂 thanks!", "Line one\n\nLine two\n", "\tindented", "Who are you?"}
	var out []map[string]any
	for i := 0; i < 24; i++ {
		var msgs []map[string]any
		if i%3 == 0 {
			msgs = append(msgs, map[string]any{"role": "system", "content": "You are a helpful assistant. " + fmt.Sprint(i)})
		}
		turns := 1 + i%6
		for j := 0; j < turns; j++ {
			role := "user"
			if j%2 == 1 {
				role = "assistant"
			}
			msgs = append(msgs, map[string]any{"role": role, "content": contents[(i+j)%len(contents)]})
		}
		out = append(out, map[string]any{"messages": msgs, "add_generation_prompt": i%2 == 0})
	}
	return out
}

func toMessages(raw []map[string]any) []TemplateMessage {
	out := make([]TemplateMessage, len(raw))
	for i, m := range raw {
		out[i] = TemplateMessage(m)
	}
	return out
}

func TestChatTemplatesMatchTransformersJS(t *testing.T) {
	convs := conversations()
	for _, model := range []string{"llama3", "llama3_1"} {
		t.Run(model, func(t *testing.T) {
			tk := loadConformance(t, model)
			ref := reference(t, model, map[string]any{"conversations": convs})
			same := 0
			for i, c := range convs {
				if ref.Chat[i].Text == nil {
					t.Fatalf("reference failed on conversation %d: %v", i, *ref.Chat[i].Error)
				}
				got, err := tk.ApplyChatTemplate(toMessages(c["messages"].([]map[string]any)), ChatOptions{AddGenerationPrompt: c["add_generation_prompt"].(bool)})
				if err != nil {
					t.Fatalf("conversation %d: %v", i, err)
				}
				if got != *ref.Chat[i].Text {
					t.Errorf("conversation %d:\n keel %q\n ref  %q", i, got, *ref.Chat[i].Text)
					continue
				}
				same++
			}
			t.Logf("%d of %d conversations render byte-identical", same, len(convs))
		})
	}
}

// transformers.js's Jinja cannot parse Qwen 3's template (it slices with [::-1]); keel renders it, checked here
// against the ChatML layout the Qwen documentation gives.
func TestQwen3Template(t *testing.T) {
	tk := loadConformance(t, "qwen3")
	got, err := tk.ApplyChatTemplate([]TemplateMessage{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
		{"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello!"}, {"role": "user", "content": "Bye"}}, ChatOptions{AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	want := "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
	if got != want {
		t.Fatalf("qwen3:\n got  %q\n want %q", got, want)
	}
}

func TestTemplateErrorsNameTheLine(t *testing.T) {
	_, err := RenderTemplate("line one\n{% if x %}\n{{ (1 if x else 2) }}\n{% endif %}", map[string]any{"x": true}, nil)
	if err == nil || !strings.Contains(err.Error(), "Line: 3") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("want a one-line error naming line 3, got %v", err)
	}
	_, err = RenderTemplate(`{{ raise_exception("roles must alternate") }}`, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "roles must alternate") {
		t.Fatalf("raise_exception: %v", err)
	}
	out, err := RenderTemplate(`{{ strftime_now("%d %b %Y") }}|{{ {"b": [1, "é"], "a": none} | tojson }}|{% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}`,
		nil, func() time.Time { return time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC) })
	if err != nil || out != `26 Nov 2026|{"a": null, "b": [1, "é"]}|3` {
		t.Fatalf("got %q, %v", out, err)
	}
}

// A chat template that renders nothing (an empty chat_template) is one clear error, not an empty prompt.
func TestEmptyChatTemplateIsAnError(t *testing.T) {
	tk := loadConformance(t, "qwen3")
	tk.ChatTemplates = map[string]string{"default": ""}
	_, err := ChatPrompt(tk, []Message{{Role: "user", Content: "Hi"}})
	if err == nil || !strings.Contains(err.Error(), "chat_template") {
		t.Fatalf("empty template: %v", err)
	}
}

// Content that is a number or a boolean is refused in one line (it rendered as "5.0" with the header lost).
func TestChatContentMustBeText(t *testing.T) {
	tk := loadConformance(t, "qwen3")
	for _, c := range []any{5.0, true, int64(3)} {
		_, err := tk.ApplyChatTemplate([]TemplateMessage{{"role": "user", "content": c}}, ChatOptions{AddGenerationPrompt: true})
		if err == nil || !strings.Contains(err.Error(), "message 0: content") || !strings.Contains(err.Error(), "string") {
			t.Errorf("content %v: %v", c, err)
		}
	}
}

// A template from a stranger cannot hang the process, exhaust its memory or overflow its stack: each bound is one
// line naming what the template did. Legitimate shallow recursion still renders.
func TestTemplatesAreBounded(t *testing.T) {
	refused := []struct{ name, src, want string }{
		{"huge range", `{% for i in range(1000000000) %}x{% endfor %}`, "at most 1000000"},
		{"64 MiB output", `{% for i in range(1000000) %}{{ "x" * 100 }}{% endfor %}`, "MiB"},
		{"self-recursive macro", `{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}`, "nest too deeply"},
		{"mutually recursive macros", `{% macro a(n) %}{{ b(n) }}{% endmacro %}{% macro b(n) %}{{ a(n + 1) }}{% endmacro %}{{ a(0) }}`, "nest too deeply"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { _, err := RenderTemplate(c.src, nil, nil); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("want one line containing %q, got %v", c.want, err)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("rendering did not stop within 60 s")
			}
		})
	}
	out, err := RenderTemplate(`{% macro count(n) %}{% if n > 0 %}{{ n }},{{ count(n - 1) }}{% endif %}{% endmacro %}{{ count(100) }}`, nil, nil)
	if err != nil || !strings.HasPrefix(out, "100,99,") || !strings.HasSuffix(out, "2,1,") {
		t.Fatalf("bounded recursion of depth 100: %q, %v", out, err)
	}
}

// Any template text renders to a prompt or one error line: no panic, no hang, no crash of the stack.
func FuzzRenderTemplate(f *testing.F) {
	for _, seed := range []string{
		`{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}`,
		`{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}`,
		`{% for i in range(1000000000) %}x{% endfor %}`,
		`{{ messages[0]['content'] | tojson }}{{ raise_exception('no') }}`,
		`{% set ns = namespace(a=1) %}{% for i in range(3) %}{% set ns.a = ns.a * 10 %}{% endfor %}{{ ns.a }}`,
	} {
		f.Add(seed)
	}
	msgs := []map[string]any{{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}}
	f.Fuzz(func(t *testing.T, src string) {
		out, err := RenderTemplate(src, map[string]any{"messages": msgs, "add_generation_prompt": true}, nil)
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("a multi-line error: %q", err)
		}
		if len(out) > maxRendered {
			t.Fatalf("rendered %d bytes, past the bound", len(out))
		}
	})
}
