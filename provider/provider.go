// Package provider is a client for any server that speaks OpenAI's chat-completions protocol (vLLM, SGLang,
// llama.cpp's server, ollama, keel serve, a hosted API): bounded concurrency, retries with backoff on 429 and
// 5xx, timeouts, and every answer cached in a work folder so that a killed run resumes without asking again.
package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint is a server's base URL (ending in /v1, as OpenAI clients take it) and the model to ask.
type Endpoint struct {
	BaseURL string
	Model   string
}

// String is the endpoint as a flag gives it: URL#MODEL.
func (e Endpoint) String() string { return e.BaseURL + "#" + e.Model }

// ParseEndpoint reads URL#MODEL ("http://127.0.0.1:8000/v1#Qwen/Qwen3-32B").
func ParseEndpoint(ref string) (Endpoint, error) {
	base, model, ok := strings.Cut(ref, "#")
	u, err := url.Parse(base)
	if !ok || model == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Endpoint{}, fmt.Errorf("%q: give URL#MODEL, such as http://127.0.0.1:8000/v1#Qwen/Qwen3-32B", ref)
	}
	return Endpoint{BaseURL: strings.TrimRight(base, "/"), Model: model}, nil
}

// KeyFromEnv is the API key for a provider: $KEEL_PROVIDER_KEY, the file $KEEL_PROVIDER_KEY_FILE names, or
// $OPENAI_API_KEY; "" when none is set (a local server). Never a flag: flags show in ps and shell history.
func KeyFromEnv(getenv func(string) string) (string, error) {
	if k := getenv("KEEL_PROVIDER_KEY"); k != "" {
		return k, nil
	}
	if f := getenv("KEEL_PROVIDER_KEY_FILE"); f != "" {
		raw, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("KEEL_PROVIDER_KEY_FILE: %w", err)
		}
		return strings.TrimSpace(string(raw)), nil
	}
	return getenv("OPENAI_API_KEY"), nil
}

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Request is one chat completion to ask.
type Request struct {
	Messages    []Message
	MaxTokens   int
	Temperature float64
	TopP        float64 // 0: the server's default
	Seed        uint64  // sent as its low 31 bits: every server takes those
}

// Reply is a server's answer.
type Reply struct {
	Text         string `json:"text"`
	FinishReason string `json:"finish_reason,omitempty"`
	Cached       bool   `json:"-"` // from the work folder's cache, not asked now
}

// Client asks one endpoint.
type Client struct {
	Endpoint
	Key         string
	Concurrency int           // requests in flight at most (default 8)
	Retries     int           // further tries after a 429, a 5xx, a timeout or a torn answer (0: 4; negative: none)
	Backoff     time.Duration // before the first retry, doubling after each (default 500 ms)
	Timeout     time.Duration // per try (default 5 min)
	Cache       *Cache        // nil: nothing cached
	HTTP        *http.Client  // nil: a plain one

	sem     chan struct{}
	once    sync.Once
	sent    atomic.Int64
	retried atomic.Int64
	hits    atomic.Int64
}

// Stats are what a client did: requests sent (retries included), retries, answers taken from the cache.
type Stats struct{ Sent, Retried, CacheHits int64 }

// Stats reads the counts.
func (c *Client) Stats() Stats {
	return Stats{Sent: c.sent.Load(), Retried: c.retried.Load(), CacheHits: c.hits.Load()}
}

func (c *Client) init() {
	c.once.Do(func() {
		if c.Concurrency < 1 {
			c.Concurrency = 8
		}
		if c.Retries < 0 {
			c.Retries = 0
		} else if c.Retries == 0 {
			c.Retries = 4
		}
		if c.Backoff <= 0 {
			c.Backoff = 500 * time.Millisecond
		}
		if c.Timeout <= 0 {
			c.Timeout = 5 * time.Minute
		}
		if c.HTTP == nil {
			c.HTTP = &http.Client{}
		}
		c.sem = make(chan struct{}, c.Concurrency)
	})
}

// wireRequest is the chat-completions body.
type wireRequest struct {
	Model       string    `json:"model"`
	Messages    []Message `json:"messages"`
	MaxTokens   int       `json:"max_tokens,omitempty"`
	Temperature float64   `json:"temperature"`
	TopP        float64   `json:"top_p,omitempty"`
	Seed        int64     `json:"seed"`
	Stream      bool      `json:"stream"`
}

func (c *Client) body(r Request) ([]byte, error) {
	return json.Marshal(wireRequest{Model: c.Model, Messages: r.Messages, MaxTokens: r.MaxTokens, Temperature: r.Temperature, TopP: r.TopP, Seed: int64(r.Seed & 0x7fffffff)})
}

// Chat asks one request, or takes its answer from the cache.
func (c *Client) Chat(ctx context.Context, r Request) (Reply, error) {
	c.init()
	body, err := c.body(r)
	if err != nil {
		return Reply{}, err
	}
	key := c.Cache.key(c.BaseURL, body)
	if rep, ok := c.Cache.get(key); ok {
		c.hits.Add(1)
		rep.Cached = true
		return rep, nil
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return Reply{}, ctx.Err()
	}
	defer func() { <-c.sem }()
	wait := c.Backoff
	for try := 0; ; try++ {
		rep, retry, err := c.try(ctx, body)
		if err == nil {
			if err := c.Cache.put(key, rep); err != nil {
				return Reply{}, err
			}
			return rep, nil
		}
		if !retry || try >= c.Retries || ctx.Err() != nil {
			if retry && try > 0 {
				err = fmt.Errorf("%w (after %d tries)", err, try+1)
			}
			return Reply{}, fmt.Errorf("provider %s: %w", c.Endpoint, err)
		}
		var after retryAfter
		if errors.As(err, &after) && after.d > wait {
			wait = min(after.d, time.Minute)
		}
		c.retried.Add(1)
		jitter := time.Duration(rand.Int64N(int64(wait)/4 + 1))
		select {
		case <-time.After(wait + jitter):
		case <-ctx.Done():
			return Reply{}, ctx.Err()
		}
		wait *= 2
	}
}

// retryAfter is a 429 or 503 that said how long to wait.
type retryAfter struct {
	error
	d time.Duration
}

func (r retryAfter) Unwrap() error { return r.error }

// try sends the request once: the reply, or whether the failure is worth another try and why it failed.
func (c *Client) try(ctx context.Context, body []byte) (Reply, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", c.BaseURL+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return Reply{}, false, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	c.sent.Add(1)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		var netErr net.Error
		switch {
		case ctx.Err() == context.DeadlineExceeded || (errors.As(err, &netErr) && netErr.Timeout()):
			return Reply{}, true, fmt.Errorf("no answer within %s", c.Timeout)
		case errors.Is(err, context.Canceled):
			return Reply{}, false, err
		}
		return Reply{}, false, fmt.Errorf("cannot reach the server (%v): start it, or check the URL", rootCause(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return Reply{}, true, fmt.Errorf("the answer broke off: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := fmt.Sprintf("%d %s", resp.StatusCode, errorMessage(raw))
		switch {
		case resp.StatusCode == 401 || resp.StatusCode == 403:
			return Reply{}, false, fmt.Errorf("the server refused the key (%s): set KEEL_PROVIDER_KEY or KEEL_PROVIDER_KEY_FILE to a key it accepts", msg)
		case resp.StatusCode == 404:
			return Reply{}, false, fmt.Errorf("%s: check the URL (it names the API root, usually ending in /v1) and the model after #", msg)
		case resp.StatusCode == 429 || resp.StatusCode >= 500:
			err := errors.New(msg)
			if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && s > 0 {
				return Reply{}, true, retryAfter{err, time.Duration(s) * time.Second}
			}
			return Reply{}, true, err
		}
		return Reply{}, false, fmt.Errorf("the server refused the request (%s)", msg)
	}
	var out struct {
		Choices []struct {
			Message      Message `json:"message"`
			FinishReason string  `json:"finish_reason"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || len(out.Choices) == 0 {
		why := "no choices"
		if err != nil {
			why = err.Error()
		}
		return Reply{}, true, fmt.Errorf("the answer is not an OpenAI chat completion (%s): %q", why, clip(raw, 120))
	}
	return Reply{Text: out.Choices[0].Message.Content, FinishReason: out.Choices[0].FinishReason}, false, nil
}

// errorMessage is an error body's message: OpenAI's {"error": {"message": ...}} shape, or its first bytes.
func errorMessage(raw []byte) string {
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && len(e.Error) > 0 {
		var obj struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(e.Error, &obj) == nil && obj.Message != "" {
			return obj.Message
		}
		var s string
		if json.Unmarshal(e.Error, &s) == nil && s != "" {
			return s
		}
	}
	return fmt.Sprintf("%q", clip(raw, 200))
}

func clip(raw []byte, n int) string {
	s := strings.TrimSpace(string(raw))
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// rootCause is a network error without the request's URL and method around it (the message names the URL).
func rootCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return fmt.Errorf("%s: %v", op.Op, op.Err)
	}
	return err
}

// ChatAll asks every request, Concurrency at a time, calling progress (if not nil) after each answer; the first
// failure stops the rest, and every answer got so far stays in the cache.
func (c *Client) ChatAll(ctx context.Context, reqs []Request, progress func(done int)) ([]Reply, error) {
	c.init()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make([]Reply, len(reqs))
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		done     int
	)
	next := make(chan int)
	for range min(c.Concurrency, len(reqs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				rep, err := c.Chat(ctx, reqs[i])
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
						cancel()
					}
				} else {
					out[i] = rep
					done++
					if progress != nil {
						progress(done)
					}
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for i := range reqs {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
