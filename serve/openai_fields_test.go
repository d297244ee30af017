package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// What OpenAI clients send that keel used to get wrong: a wrong method is 405 with Allow; the bearer scheme in
// any case; a bad value is quoted by a short prefix only; a field keel does not apply is refused naming it.
func TestOpenAIProtocolEdges(t *testing.T) {
	ts := newTestServer(t, true, 4)
	ts.start()
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" || !strings.Contains(string(body), "method_not_allowed") {
			t.Errorf("GET %s: %d Allow %q %s", path, resp.StatusCode, resp.Header.Get("Allow"), body)
		}
	}
	msg := map[string]any{"model": ts.name, "messages": []any{map[string]any{"role": "user", "content": "Hi"}}, "max_tokens": 2}
	for _, auth := range []string{"bearer " + testKey, "BEARER " + testKey, "Bearer  " + testKey} {
		raw, _ := json.Marshal(msg)
		req, _ := http.NewRequest("POST", ts.URL+"/v1/chat/completions", strings.NewReader(string(raw)))
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("Authorization %q: %d", auth, resp.StatusCode)
		}
	}
	huge := strings.Repeat("x", 900_000)
	for name, body := range map[string]map[string]any{
		"cap":   {"model": ts.name, "messages": msg["messages"], "keel": map[string]any{"cap": huge}},
		"model": {"model": huge, "messages": msg["messages"]},
		"role":  {"model": ts.name, "messages": []any{map[string]any{"role": huge, "content": "Hi"}}},
	} {
		resp, err := ts.post(t, context.Background(), "/v1/chat/completions", testKey, body)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 4 || len(raw) > 1024 {
			t.Errorf("a 900 KB %s: %d, %d bytes back: %.200s", name, resp.StatusCode, len(raw), raw)
		}
	}
	for field, value := range map[string]any{"tools": []any{map[string]any{"type": "function"}}, "tool_choice": "required",
		"response_format": map[string]string{"type": "json_object"}} {
		body := map[string]any{"model": ts.name, "messages": msg["messages"], field: value}
		resp, err := ts.post(t, context.Background(), "/v1/chat/completions", testKey, body)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(raw), field) || !strings.Contains(string(raw), "unsupported_parameter") {
			t.Errorf("%s: %d %s", field, resp.StatusCode, raw)
		}
	}
	// Their neutral values are accepted, as clients send them by default.
	neutral := map[string]any{"model": ts.name, "messages": msg["messages"], "max_tokens": 2, "logprobs": false, "presence_penalty": 0,
		"frequency_penalty": 0, "logit_bias": map[string]int{}, "tools": nil, "response_format": map[string]string{"type": "text"}}
	resp, err := ts.post(t, context.Background(), "/v1/chat/completions", testKey, neutral)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("neutral values: %d", resp.StatusCode)
	}
	// Bad scoring fields are named: top_logprobs without logprobs, a bias past the vocabulary, a penalty past 2.
	manyBiases := map[string]int{}
	for i := range 301 {
		manyBiases[fmt.Sprint(i)] = 1
	}
	for _, bad := range []map[string]any{{"logit_bias": manyBiases}, {"top_logprobs": 2}, {"logprobs": true, "top_logprobs": 21}, {"logit_bias": map[string]int{"99999999": 1}},
		{"logit_bias": map[string]int{"x": 1}}, {"presence_penalty": 3}, {"logprobs": 2}} {
		body := map[string]any{"model": ts.name, "messages": msg["messages"]}
		for k, v := range bad {
			body[k] = v
		}
		resp, err := ts.post(t, context.Background(), "/v1/chat/completions", testKey, body)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("%v: %d %s", bad, resp.StatusCode, raw)
		}
	}
	// Where the steer acts: every position (the default) or the reply's; anything else is named.
	for positions, want := range map[string]int{"all": 200, "generated": 200, "prompt": 400} {
		body := map[string]any{"model": ts.name, "messages": msg["messages"], "max_tokens": 2, "keel": map[string]any{"steer": map[string]any{"c": -2}, "positions": positions}}
		resp, err := ts.post(t, context.Background(), "/v1/chat/completions", testKey, body)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || want == 400 && !strings.Contains(string(raw), "positions") {
			t.Errorf("positions %s: %d %s", positions, resp.StatusCode, raw)
		}
	}
	// An image part is refused by name; an unknown role is named by a short prefix.
	img := map[string]any{"model": ts.name, "messages": []any{map[string]any{"role": "user", "content": []any{map[string]any{"type": "image_url", "image_url": map[string]string{"url": "x"}}}}}}
	resp, err = ts.post(t, context.Background(), "/v1/chat/completions", testKey, img)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(raw), "image_url") {
		t.Errorf("an image part: %d %s", resp.StatusCode, raw)
	}
}

// Without keys every client shares one owner: the in-flight limit is the scheduler's (a full batch and a full
// queue), named as the server's, not 8 "for this key".
func TestInFlightWithoutKeysIsTheServers(t *testing.T) {
	ts := newTestServer(t, false, 4, func(l *Limits) { l.StreamsPerKey = 2 })
	api := &API{Sched: ts.sched, Limits: Limits{StreamsPerKey: 2}}
	if limit, whose := api.inFlightLimit(); limit != 4+64 || whose != "on this server" {
		t.Fatalf("without keys: %d %s", limit, whose)
	}
	api.Keys = map[string]bool{testKey: true}
	if limit, whose := api.inFlightLimit(); limit != 2 || whose != "for this key" {
		t.Fatalf("with keys: %d %s", limit, whose)
	}
	// Five clients at once against a limit of 2 per key: none is refused without keys.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	codes := make(chan int, 5)
	for i := 0; i < 5; i++ {
		go func() {
			resp, err := ts.post(t, ctx, "/v1/chat/completions", "", map[string]any{"model": ts.name, "messages": []any{map[string]any{"role": "user", "content": "Hi"}}, "max_tokens": 4})
			if err != nil {
				codes <- -1
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	ts.start()
	for i := 0; i < 5; i++ {
		if c := <-codes; c != 200 {
			t.Errorf("client %d: %d", i, c)
		}
	}
}
