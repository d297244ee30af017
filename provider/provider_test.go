package provider

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fake is a chat-completions server whose answers a test scripts, counting what it was sent.
type fake struct {
	*httptest.Server
	hits   atomic.Int64
	answer func(n int64, w http.ResponseWriter, body map[string]any)
}

func newFake(t *testing.T, answer func(n int64, w http.ResponseWriter, body map[string]any)) *fake {
	f := &fake{answer: answer}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.hits.Add(1)
		if r.URL.Path != "/v1/chat/completions" {
			http.Error(w, `{"error": {"message": "no such path"}}`, 404)
			return
		}
		if r.Header.Get("Authorization") != "Bearer right" {
			w.WriteHeader(401)
			fmt.Fprint(w, `{"error": {"message": "Incorrect API key provided"}}`)
			return
		}
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		f.answer(n, w, body)
	}))
	t.Cleanup(f.Close)
	return f
}

func echo(w http.ResponseWriter, body map[string]any) {
	msgs := body["messages"].([]any)
	last := msgs[len(msgs)-1].(map[string]any)["content"].(string)
	json.NewEncoder(w).Encode(map[string]any{"choices": []any{map[string]any{"message": map[string]any{"role": "assistant", "content": "re: " + last}, "finish_reason": "stop"}}})
}

func ask(text string) Request {
	return Request{Messages: []Message{{Role: "user", Content: text}}, MaxTokens: 8, Temperature: 0.7, Seed: 1}
}

func TestParseEndpoint(t *testing.T) {
	e, err := ParseEndpoint("http://127.0.0.1:8000/v1/#Qwen/Qwen3-32B")
	if err != nil || e.BaseURL != "http://127.0.0.1:8000/v1" || e.Model != "Qwen/Qwen3-32B" {
		t.Fatalf("%+v %v", e, err)
	}
	for _, bad := range []string{"", "http://x/v1", "http://x/v1#", "ftp://x/v1#m", "localhost:8000#m", "#m"} {
		if _, err := ParseEndpoint(bad); err == nil || !strings.Contains(err.Error(), "URL#MODEL") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// Answers are cached: a second client on the same cache file sends nothing, and a torn last line (a run killed
// mid-write) costs only its own answer.
func TestCacheResumesWithoutAsking(t *testing.T) {
	f := newFake(t, func(_ int64, w http.ResponseWriter, body map[string]any) { echo(w, body) })
	path := filepath.Join(t.TempDir(), "answers.jsonl")
	reqs := []Request{ask("a"), ask("b"), ask("c"), ask("d")}
	run := func() ([]Reply, Stats) {
		cache, err := OpenCache(path)
		if err != nil {
			t.Fatal(err)
		}
		defer cache.Close()
		c := &Client{Endpoint: Endpoint{f.URL + "/v1", "m"}, Key: "right", Cache: cache, Concurrency: 2}
		out, err := c.ChatAll(context.Background(), reqs, nil)
		if err != nil {
			t.Fatal(err)
		}
		return out, c.Stats()
	}
	first, st := run()
	if st.Sent != 4 || first[2].Text != "re: c" {
		t.Fatalf("first run: %+v %+v", first, st)
	}
	if _, st := run(); st.Sent != 0 || st.CacheHits != 4 || f.hits.Load() != 4 {
		t.Fatalf("second run asked again: %+v (server saw %d)", st, f.hits.Load())
	}
	raw, _ := os.ReadFile(path)
	os.WriteFile(path, raw[:len(raw)-10], 0o644) // the last answer torn
	out, st := run()
	if st.Sent != 1 || out[0].Text != "re: a" || out[3].Text != "re: d" {
		t.Fatalf("after a torn line: %+v %+v", out, st)
	}
	if _, st := run(); st.Sent != 0 {
		t.Fatalf("the torn answer was not cached again: %+v", st)
	}
}

// A bad server gets one clear line each, with retries bounded, and nothing cached is lost.
func TestBadServersAreOneClearLine(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String() + "/v1"
	ln.Close()
	flaky := newFake(t, func(n int64, w http.ResponseWriter, body map[string]any) {
		if n <= 2 {
			w.WriteHeader(503)
			return
		}
		echo(w, body)
	})
	down := newFake(t, func(_ int64, w http.ResponseWriter, _ map[string]any) {
		w.WriteHeader(500)
		fmt.Fprint(w, `{"error": {"message": "engine crashed"}}`)
	})
	slow := newFake(t, func(_ int64, w http.ResponseWriter, _ map[string]any) { time.Sleep(2 * time.Second) })
	torn := newFake(t, func(_ int64, w http.ResponseWriter, _ map[string]any) { fmt.Fprint(w, `{"choices": [{"mess`) })
	cases := []struct {
		name, url, key string
		want           string // in the error ("" : success)
		sent           int64
	}{
		{"unreachable", dead, "right", "cannot reach the server", 1},
		{"503 twice then fine", flaky.URL + "/v1", "right", "", 3},
		{"500 always", down.URL + "/v1", "right", "500 engine crashed (after 3 tries)", 3},
		{"timeout", slow.URL + "/v1", "right", "no answer within 200ms (after 3 tries)", 3},
		{"malformed JSON", torn.URL + "/v1", "right", "not an OpenAI chat completion", 3},
		{"wrong key", flaky.URL + "/v1", "wrong", "refused the key (401 Incorrect API key provided): set KEEL_PROVIDER_KEY", 1},
		{"wrong path", flaky.URL, "right", "404", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cache, err := OpenCache(filepath.Join(t.TempDir(), "answers.jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Close()
			cache.put("kept", Reply{Text: "an earlier answer"})
			cl := &Client{Endpoint: Endpoint{c.url, "m"}, Key: c.key, Cache: cache, Retries: 2, Backoff: 10 * time.Millisecond, Timeout: 200 * time.Millisecond}
			rep, err := cl.Chat(context.Background(), ask("hello"))
			switch {
			case c.want == "" && (err != nil || rep.Text != "re: hello"):
				t.Fatalf("want an answer: %+v %v", rep, err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n")):
				t.Fatalf("want one line with %q, got %v", c.want, err)
			}
			if c.want != "" && !strings.HasPrefix(err.Error(), "provider "+c.url+"#m: ") {
				t.Fatalf("the error does not name the endpoint: %v", err)
			}
			if got := cl.Stats().Sent; got != c.sent {
				t.Fatalf("sent %d requests, want %d", got, c.sent)
			}
			if _, ok := cache.get("kept"); !ok || cache.Len() != map[bool]int{true: 2, false: 1}[c.want == ""] {
				t.Fatalf("cache after the failure: %d answers", cache.Len())
			}
		})
	}
}
