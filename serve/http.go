package serve

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/workbench"
)

// Limits bound what one client may ask.
type Limits struct {
	MaxBodyBytes     int64         // request body
	MaxTokens        int           // max_tokens of one request
	MaxPromptTokens  int           // prompt tokens of one request
	StreamsPerKey    int           // requests in flight per API key (or per server without keys)
	DefaultMaxTokens int           // when a request gives none
	MaxConns         int           // connections open at once (LimitListener)
	IdleTimeout      time.Duration // a keep-alive connection with no request this long is closed
}

// DefaultLimits suit a shared research box.
func DefaultLimits() Limits {
	return Limits{MaxBodyBytes: 1 << 20, MaxTokens: 4096, MaxPromptTokens: 8192, StreamsPerKey: 8, DefaultMaxTokens: 256, MaxConns: 256, IdleTimeout: time.Minute}
}

// API is the OpenAI-compatible HTTP front of a Scheduler.
type API struct {
	Sched  *Scheduler
	Name   string          // the model id clients name
	Keys   map[string]bool // bearer keys; empty: no authentication (loopback only, which the caller enforces)
	Limits Limits

	mu       sync.Mutex
	inFlight map[string]int
}

// ReadKeys reads an API key file: one key per line, # comments and blank lines ignored.
func ReadKeys(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--api-keys: %w", err)
	}
	defer f.Close()
	keys := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k := strings.TrimSpace(sc.Text())
		if k == "" || strings.HasPrefix(k, "#") {
			continue
		}
		if strings.ContainsAny(k, " \t") || len(k) < 16 {
			return nil, fmt.Errorf("--api-keys %s: every key is one word of at least 16 characters (make one with: openssl rand -hex 24)", path)
		}
		keys[k] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--api-keys %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("--api-keys %s holds no key: one per line", path)
	}
	return keys, nil
}

// Handler routes the API.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /metrics", a.metrics)
	mux.HandleFunc("GET /v1/models", a.authed(a.models))
	mux.HandleFunc("POST /v1/chat/completions", a.authed(a.chat))
	mux.HandleFunc("POST /v1/completions", a.authed(a.completions))
	routes := map[string]string{"/healthz": "GET", "/metrics": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST", "/v1/completions": "POST"}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if method, ok := routes[r.URL.Path]; ok {
			w.Header().Set("Allow", method)
			apiError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", fmt.Sprintf("%s %s: this route takes %s", quoteShort(r.Method), r.URL.Path, method))
			return
		}
		apiError(w, http.StatusNotFound, "invalid_request_error", "not_found", fmt.Sprintf("no route %s %s: the API has GET /v1/models, POST /v1/chat/completions, POST /v1/completions", quoteShort(r.Method), quoteShort(r.URL.Path)))
	})
	return mux
}

// apiError writes OpenAI's error shape.
func apiError(w http.ResponseWriter, status int, typ, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": code}})
}

// authed checks the bearer key and holds one of the key's stream slots for the request.
func (a *API) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := ""
		if len(a.Keys) > 0 {
			// The scheme is case-insensitive (RFC 9110): "bearer KEY" is a Bearer key.
			scheme, got, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
			got = strings.TrimSpace(got)
			if !strings.EqualFold(scheme, "Bearer") || !a.knownKey(got) {
				apiError(w, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", "missing or wrong API key: send Authorization: Bearer KEY with a key from the server's --api-keys file")
				return
			}
			key = got
		}
		// The body is read before a slot is taken: a slow sender holds its connection (bounded by the rate
		// floor), never one of the key's slots.
		if r.Method == http.MethodPost {
			body, err := readBody(w, r, a.Limits.MaxBodyBytes)
			if err != nil {
				a.bodyError(w, err)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		a.mu.Lock()
		if a.inFlight == nil {
			a.inFlight = map[string]int{}
		}
		if limit, whose := a.inFlightLimit(); a.inFlight[key] >= limit {
			a.mu.Unlock()
			apiError(w, http.StatusTooManyRequests, "rate_limit_error", "too_many_streams", fmt.Sprintf("%d requests in flight %s already: wait for one to finish", limit, whose))
			return
		}
		a.inFlight[key]++
		a.mu.Unlock()
		defer func() {
			a.mu.Lock()
			a.inFlight[key]--
			a.mu.Unlock()
		}()
		h(w, r)
	}
}

// inFlightLimit is how many requests may be in flight for one key: StreamsPerKey with keys; without keys every
// client is the one owner, so the limit is the server's: what its scheduler holds (decoding and queued).
func (a *API) inFlightLimit() (int, string) {
	if len(a.Keys) > 0 {
		return a.Limits.StreamsPerKey, "for this key"
	}
	return a.Sched.Capacity(), "on this server"
}

func (a *API) knownKey(k string) bool {
	for known := range a.Keys {
		if subtle.ConstantTimeCompare([]byte(known), []byte(k)) == 1 {
			return true
		}
	}
	return false
}

func (a *API) models(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, map[string]any{"object": "list", "data": []any{map[string]any{"id": a.Name, "object": "model", "created": a.Sched.started.Unix(), "owned_by": "keel"}}})
}

func (a *API) metrics(w http.ResponseWriter, r *http.Request) {
	st := a.Sched.Stats()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP keel_queue_depth Requests waiting for a batch.\n# TYPE keel_queue_depth gauge\nkeel_queue_depth %d\n", st.Queued)
	fmt.Fprintf(w, "# HELP keel_active_rows Rows generating now.\n# TYPE keel_active_rows gauge\nkeel_active_rows %d\n", st.Active)
	fmt.Fprintf(w, "# HELP keel_requests_total Requests accepted.\n# TYPE keel_requests_total counter\nkeel_requests_total %d\n", st.Requests)
	fmt.Fprintf(w, "# HELP keel_tokens_generated_total Tokens sent to clients.\n# TYPE keel_tokens_generated_total counter\nkeel_tokens_generated_total %d\n", st.TokensSent)
	fmt.Fprintf(w, "# HELP keel_decode_seconds_total Time spent in prefills and decode steps.\n# TYPE keel_decode_seconds_total counter\nkeel_decode_seconds_total %g\n", st.DecodeSeconds)
	fmt.Fprintf(w, "# HELP keel_uptime_seconds Time since the server started.\n# TYPE keel_uptime_seconds counter\nkeel_uptime_seconds %g\n", st.UptimeSeconds)
	fmt.Fprintf(w, "# HELP keel_tokens_per_second_1m Tokens decoded per second of wall time over the last minute (idle time included).\n# TYPE keel_tokens_per_second_1m gauge\nkeel_tokens_per_second_1m %g\n", st.RecentTokensPerSecond)
	fmt.Fprintf(w, "# HELP keel_decode_tokens_per_second_1m Tokens decoded per second of decoding over the last minute (the rate while busy).\n# TYPE keel_decode_tokens_per_second_1m gauge\nkeel_decode_tokens_per_second_1m %g\n", st.RecentDecodeTokensPerSecond)
	fmt.Fprintf(w, "# HELP keel_time_to_first_token_seconds From a request's arrival to its first token.\n# TYPE keel_time_to_first_token_seconds summary\nkeel_time_to_first_token_seconds_sum %g\nkeel_time_to_first_token_seconds_count %g\n", st.TTFTSeconds, st.TTFTCount)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// completionRequest is the union of what /v1/chat/completions and /v1/completions read.
type completionRequest struct {
	Model               string                 `json:"model"`
	Messages            []apiMessage           `json:"messages"`
	Prompt              *string                `json:"prompt"`
	MaxTokens           *int                   `json:"max_tokens"`
	MaxCompletionTokens *int                   `json:"max_completion_tokens"`
	Temperature         *float64               `json:"temperature"`
	TopP                *float64               `json:"top_p"`
	Seed                *int64                 `json:"seed"`
	Stop                json.RawMessage        `json:"stop"`
	Stream              bool                   `json:"stream"`
	N                   *int                   `json:"n"`
	Keel                *workbench.KeelOptions `json:"keel"`
	StreamOptions       *streamOptions         `json:"stream_options"`

	// Logprobs is chat's true/false (with TopLogprobs) or completions' count of top tokens.
	Logprobs         json.RawMessage    `json:"logprobs"`
	TopLogprobs      *int               `json:"top_logprobs"`
	PresencePenalty  *float64           `json:"presence_penalty"`
	FrequencyPenalty *float64           `json:"frequency_penalty"`
	LogitBias        map[string]float64 `json:"logit_bias"`

	// OpenAI's fields keel does not apply: a request that sets one to anything but its neutral value is refused
	// with 400 naming it (unsupported), never answered as if it had been applied.
	Tools          json.RawMessage `json:"tools"`
	ToolChoice     json.RawMessage `json:"tool_choice"`
	Functions      json.RawMessage `json:"functions"`
	ResponseFormat *struct {
		Type string `json:"type"`
	} `json:"response_format"`
}

// streamOptions is OpenAI's stream_options: include_usage sends one last chunk, with no choices, carrying the
// usage (usage is keel's older spelling: the usage on the finishing chunk).
type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
	Usage        bool `json:"usage"`
}

// apiMessage is a chat message as OpenAI clients send it: content a string or an array of parts, of which keel
// reads text parts; the developer role is the system role of newer models.
type apiMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
	Name    string          `json:"name,omitempty"`
}

// chatMessages turns the request's messages into the template's, or names the first one keel cannot take.
func chatMessages(in []apiMessage) ([]tokenizer.Message, error) {
	out := make([]tokenizer.Message, len(in))
	for i, m := range in {
		role := m.Role
		switch role {
		case "developer":
			role = "system"
		case "system", "user", "assistant":
		default:
			return nil, invalid("invalid_messages", "messages[%d]: role %s: use system (or developer), user or assistant", i, quoteShort(m.Role))
		}
		var text string
		if err := json.Unmarshal(m.Content, &text); err != nil {
			var parts []struct {
				Type string  `json:"type"`
				Text *string `json:"text"`
			}
			if err := json.Unmarshal(m.Content, &parts); err != nil {
				return nil, invalid("invalid_messages", "messages[%d].content: give a string or an array of {\"type\": \"text\", \"text\": ...} parts", i)
			}
			var b strings.Builder
			for j, p := range parts {
				if p.Type != "text" || p.Text == nil {
					return nil, invalid("unsupported_content", "messages[%d].content[%d]: a %s part: keel's models read text parts only", i, j, quoteShort(p.Type))
				}
				b.WriteString(*p.Text)
			}
			text = b.String()
		}
		out[i] = tokenizer.Message{Role: role, Content: text}
	}
	return out, nil
}

// readScoring reads the fields that change or report the choice of each token: presence and frequency
// penalties, logit_bias, and logprobs (chat: logprobs true with top_logprobs N; completions: logprobs N).
func (c *completionRequest) readScoring(sp *model.Sampling, chat bool) error {
	if c.PresencePenalty != nil {
		sp.PresencePenalty = *c.PresencePenalty
	}
	if c.FrequencyPenalty != nil {
		sp.FrequencyPenalty = *c.FrequencyPenalty
	}
	if len(c.LogitBias) > 300 {
		return invalid("invalid_logit_bias", "logit_bias: %d tokens: give at most 300", len(c.LogitBias))
	}
	for k, v := range c.LogitBias {
		id, err := strconv.Atoi(k)
		if err != nil {
			return invalid("invalid_logit_bias", "logit_bias: key %s is not a token id", quoteShort(k))
		}
		if sp.LogitBias == nil {
			sp.LogitBias = map[int]float64{}
		}
		sp.LogitBias[id] = v
	}
	raw := strings.TrimSpace(string(c.Logprobs))
	switch {
	case raw == "" || raw == "null" || raw == "false":
		if c.TopLogprobs != nil && *c.TopLogprobs > 0 {
			return invalid("invalid_logprobs", "top_logprobs %d needs logprobs: true", *c.TopLogprobs)
		}
	case chat && raw == "true":
		sp.Logprobs = true
		if c.TopLogprobs != nil {
			sp.TopLogprobs = *c.TopLogprobs
		}
	case !chat:
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 || n > model.MaxTopLogprobs {
			return invalid("invalid_logprobs", "logprobs %s: give the number of most likely tokens, 0 to %d", quoteShort(raw), model.MaxTopLogprobs)
		}
		sp.Logprobs, sp.TopLogprobs = true, n
	default:
		return invalid("invalid_logprobs", "logprobs %s: give true or false (and top_logprobs N)", quoteShort(raw))
	}
	return nil // the ranges are model.Sampling.Check's
}

// chatLogprob is a token's log-probabilities as a chat response's logprobs.content item, its top_logprobs
// the most likely tokens at its position (each with the bytes it contributes after the token before).
func (a *API) chatLogprob(t Token) map[string]any {
	tok := a.Sched.Model().Tokenizer
	entry := func(id int, lp float64) map[string]any {
		b := tok.TokenBytes(id, t.Prev)
		ints := make([]int, len(b))
		for i, x := range b {
			ints[i] = int(x)
		}
		return map[string]any{"token": string(b), "logprob": lp, "bytes": ints}
	}
	item := entry(t.Logprobs.Chosen.ID, t.Logprobs.Chosen.Logprob)
	top := []any{}
	for _, x := range t.Logprobs.Top {
		top = append(top, entry(x.ID, x.Logprob))
	}
	item["top_logprobs"] = top
	return item
}

// completionLogprobs is the completions API's logprobs object over tokens (offset: the text before them).
func (a *API) completionLogprobs(tokens []Token, offset int) map[string]any {
	tok := a.Sched.Model().Tokenizer
	out := map[string]any{"tokens": []string{}, "token_logprobs": []float64{}, "top_logprobs": []map[string]float64{}, "text_offset": []int{}}
	var names []string
	var lps []float64
	var tops []map[string]float64
	var offsets []int
	for _, t := range tokens {
		if t.Logprobs == nil {
			continue
		}
		text := string(tok.TokenBytes(t.ID, t.Prev))
		names, lps, offsets = append(names, text), append(lps, t.Logprobs.Chosen.Logprob), append(offsets, offset)
		top := map[string]float64{}
		for _, x := range t.Logprobs.Top {
			top[string(tok.TokenBytes(x.ID, t.Prev))] = x.Logprob
		}
		tops = append(tops, top)
		offset += len(t.Text)
	}
	if len(names) > 0 {
		out["tokens"], out["token_logprobs"], out["top_logprobs"], out["text_offset"] = names, lps, tops, offsets
	}
	return out
}

// unsupported names the first OpenAI field the request sets that keel would not apply.
func (c *completionRequest) unsupported() string {
	switch {
	case len(c.Tools) > 0 && string(c.Tools) != "null" && string(c.Tools) != "[]":
		return "tools"
	case len(c.Functions) > 0 && string(c.Functions) != "null" && string(c.Functions) != "[]":
		return "functions"
	case len(c.ToolChoice) > 0 && string(c.ToolChoice) != "null" && string(c.ToolChoice) != `"none"` && string(c.ToolChoice) != `"auto"`:
		return "tool_choice"
	case c.ResponseFormat != nil && c.ResponseFormat.Type != "" && c.ResponseFormat.Type != "text":
		return "response_format"
	}
	return ""
}

// quoteShort quotes what a client sent, cut to a short prefix: an error names the bad value without sending
// a large body back.
func quoteShort(s string) string {
	const most = 48
	if len(s) <= most {
		return strconv.Quote(s)
	}
	cut := most
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(s[:cut]), len(s))
}

// badRequest is a 400 with OpenAI's shape.
type badRequest struct {
	status int
	code   string
	msg    string
}

func (e badRequest) Error() string { return e.msg }

func invalid(code, format string, args ...any) error {
	return badRequest{http.StatusBadRequest, code, fmt.Sprintf(format, args...)}
}

// parse reads and checks a request and turns it into the scheduler's.
func (a *API) parse(r *http.Request, chat bool) (completionRequest, Request, error) {
	var c completionRequest
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&c); err != nil { // the body is read whole and bounded already (authed, readBody)
		return c, Request{}, invalid("invalid_json", "the body is not a JSON request: %v", err)
	}
	if c.Model != a.Name {
		return c, Request{}, badRequest{http.StatusNotFound, "model_not_found", fmt.Sprintf("model %s: this server serves %q (GET /v1/models)", quoteShort(c.Model), a.Name)}
	}
	if field := c.unsupported(); field != "" {
		return c, Request{}, invalid("unsupported_parameter", "%s: keel serve does not apply it yet; leave it out (or at its default)", field)
	}
	if c.N != nil && *c.N != 1 {
		return c, Request{}, invalid("invalid_n", "n %d: keel serves one choice per request", *c.N)
	}
	req := Request{MaxTokens: a.Limits.DefaultMaxTokens, Sampling: model.Sampling{Temperature: 1, TopP: 1}}
	asked := false // max_tokens given: it must fit the window with the prompt, else it is cut to fit
	for _, v := range []*int{c.MaxTokens, c.MaxCompletionTokens} {
		if v != nil {
			req.MaxTokens, asked = *v, true
		}
	}
	if req.MaxTokens < 1 || req.MaxTokens > a.Limits.MaxTokens {
		return c, Request{}, invalid("invalid_max_tokens", "max_tokens %d: give 1 to %d", req.MaxTokens, a.Limits.MaxTokens)
	}
	if c.Temperature != nil {
		req.Sampling.Temperature = *c.Temperature
	}
	if c.TopP != nil {
		req.Sampling.TopP = *c.TopP
	}
	if c.Seed != nil {
		req.Sampling.Seed = uint64(*c.Seed)
	}
	if err := c.readScoring(&req.Sampling, chat); err != nil {
		return c, Request{}, err
	}
	if err := req.Sampling.Check(); err != nil {
		return c, Request{}, invalid("invalid_sampling", "%v", err)
	}
	if err := req.Sampling.CheckVocab(a.Sched.Model().Config.VocabSize); err != nil {
		return c, Request{}, invalid("invalid_logit_bias", "%v", err)
	}
	if len(c.Stop) > 0 && string(c.Stop) != "null" {
		var one string
		if json.Unmarshal(c.Stop, &one) == nil {
			req.Stop = []string{one}
		} else if err := json.Unmarshal(c.Stop, &req.Stop); err != nil || len(req.Stop) > 4 {
			return c, Request{}, invalid("invalid_stop", "stop: give a string or up to 4 strings")
		}
	}
	tok := a.Sched.Model().Tokenizer
	var err error
	if chat {
		if len(c.Messages) == 0 {
			return c, Request{}, invalid("invalid_messages", "messages: give at least one {role, content}")
		}
		msgs, err := chatMessages(c.Messages)
		if err != nil {
			return c, Request{}, err
		}
		if req.Prompt, err = tokenizer.ChatPrompt(tok, msgs); err != nil {
			return c, Request{}, invalid("invalid_messages", "%v", err)
		}
	} else {
		if c.Prompt == nil || *c.Prompt == "" {
			return c, Request{}, invalid("invalid_prompt", "prompt: give the text to continue")
		}
		req.Prompt = tok.Encode(*c.Prompt, true)
	}
	if len(req.Prompt) > a.Limits.MaxPromptTokens {
		return c, Request{}, invalid("context_length_exceeded", "the prompt is %d tokens: this server takes up to %d", len(req.Prompt), a.Limits.MaxPromptTokens)
	}
	// The model's window holds the prompt and the reply: a request past it is the client's to shorten, refused
	// before any token (streaming or not), as OpenAI refuses it.
	if window := a.Sched.Model().Window(); window > 0 {
		switch {
		case len(req.Prompt) >= window:
			return c, Request{}, invalid("context_length_exceeded", "this model's window is %d tokens and the prompt is %d: shorten the messages", window, len(req.Prompt))
		case asked && len(req.Prompt)+req.MaxTokens > window:
			return c, Request{}, invalid("context_length_exceeded", "this model's window is %d tokens: the prompt's %d and max_tokens %d pass it; lower max_tokens to %d or shorten the messages", window, len(req.Prompt), req.MaxTokens, window-len(req.Prompt))
		default:
			req.MaxTokens = min(req.MaxTokens, window-len(req.Prompt))
		}
	}
	if c.Keel != nil {
		if req.Interventions, req.Project, err = a.keelInterventions(*c.Keel); err != nil {
			return c, Request{}, invalid("invalid_keel", "keel: %v", err)
		}
	}
	return c, req, nil
}

// keelInterventions turns keel's extension into the request's interventions and projected layers.
func (a *API) keelInterventions(k workbench.KeelOptions) ([]model.Intervention, []int, error) {
	return workbench.KeelInterventions(a.Sched.Axis(), a.Sched.Model().NumLayers(), k)
}

// keelToken is a token's keel fields in a response.
type keelToken struct {
	Token       string             `json:"token"`
	ID          int                `json:"id"`
	Projections map[string]float32 `json:"projections,omitempty"`
	CapMoves    map[string]float32 `json:"cap_moves,omitempty"`
}

func keelOf(t Token) keelToken {
	// A cap that did not bind reports 0, not the -0 its negated excess comes out as.
	k := keelToken{Token: t.Text, ID: t.ID}
	layerKeys := func(m map[int]float32) map[string]float32 {
		if m == nil {
			return nil
		}
		out := make(map[string]float32, len(m))
		for l, v := range m {
			if v == 0 {
				v = 0
			}
			out[strconv.Itoa(l)] = v
		}
		return out
	}
	k.Projections, k.CapMoves = layerKeys(t.Projections), layerKeys(t.CapMoves)
	return k
}

func (a *API) chat(w http.ResponseWriter, r *http.Request)        { a.complete(w, r, true) }
func (a *API) completions(w http.ResponseWriter, r *http.Request) { a.complete(w, r, false) }

func (a *API) complete(w http.ResponseWriter, r *http.Request, chat bool) {
	c, req, err := a.parse(r, chat)
	if err != nil {
		var br badRequest
		if errors.As(err, &br) {
			typ := "invalid_request_error"
			apiError(w, br.status, typ, br.code, br.msg)
			return
		}
		apiError(w, http.StatusBadRequest, "invalid_request_error", "invalid_request", err.Error())
		return
	}
	tokens, err := a.Sched.Submit(r.Context(), req)
	switch {
	case errors.Is(err, ErrBusy):
		apiError(w, http.StatusTooManyRequests, "rate_limit_error", "queue_full", err.Error())
		return
	case errors.Is(err, ErrClosed):
		apiError(w, http.StatusServiceUnavailable, "server_error", "shutting_down", err.Error())
		return
	case err != nil:
		apiError(w, http.StatusBadRequest, "invalid_request_error", "invalid_request", err.Error())
		return
	}
	id := newID(chat)
	created := time.Now().Unix()
	object := "text_completion"
	if chat {
		object = "chat.completion"
	}
	if !c.Stream {
		var text strings.Builder
		var keel []keelToken
		var end Token
		var got []Token
		for t := range tokens {
			if t.Done {
				end = t
				break
			}
			text.WriteString(t.Text)
			keel = append(keel, keelOf(t))
			got = append(got, t)
		}
		if end.Err != nil {
			apiError(w, http.StatusInternalServerError, "server_error", "generation_failed", end.Err.Error())
			return
		}
		choice := map[string]any{"index": 0, "finish_reason": finishReason(end.Reason), "logprobs": nil}
		if chat {
			choice["message"] = map[string]any{"role": "assistant", "content": text.String()}
			if req.Sampling.Logprobs {
				content := []any{}
				for _, t := range got {
					if t.Logprobs != nil {
						content = append(content, a.chatLogprob(t))
					}
				}
				choice["logprobs"] = map[string]any{"content": content}
			}
		} else {
			choice["text"] = text.String()
			if req.Sampling.Logprobs {
				choice["logprobs"] = a.completionLogprobs(got, 0)
			}
		}
		writeJSON(w, map[string]any{"id": id, "object": object, "created": created, "model": a.Name, "choices": []any{choice},
			"usage": usage(len(req.Prompt), end.Completion), "keel": map[string]any{"tokens": keel}})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	flusher, _ := w.(http.Flusher)
	send := func(v any) bool {
		raw, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", raw); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	offset := 0 // the completions API's text_offset of the next token
	chunk := func(delta map[string]any, text string, finish any, extra map[string]any, t *Token) map[string]any {
		choice := map[string]any{"index": 0, "finish_reason": finish, "logprobs": nil}
		if t != nil && t.Logprobs != nil {
			if chat {
				choice["logprobs"] = map[string]any{"content": []any{a.chatLogprob(*t)}}
			} else {
				choice["logprobs"] = a.completionLogprobs([]Token{*t}, offset)
			}
		}
		if chat {
			choice["delta"] = delta
		} else {
			choice["text"] = text
		}
		m := map[string]any{"id": id, "object": object + ".chunk", "created": created, "model": a.Name, "choices": []any{choice}}
		if !chat {
			m["object"] = object
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	if chat && !send(chunk(map[string]any{"role": "assistant", "content": ""}, "", nil, nil, nil)) {
		return // the client went away: its request context is cancelled, which frees the row
	}
	for t := range tokens {
		if t.Done {
			if t.Err != nil {
				send(map[string]any{"error": map[string]any{"message": t.Err.Error(), "type": "server_error", "code": "generation_failed"}})
				return
			}
			extra := map[string]any{}
			if c.StreamOptions != nil && c.StreamOptions.Usage {
				extra["usage"] = usage(len(req.Prompt), t.Completion)
			}
			send(chunk(map[string]any{}, "", finishReason(t.Reason), extra, nil))
			if c.StreamOptions != nil && c.StreamOptions.IncludeUsage {
				last := chunk(nil, "", nil, map[string]any{"usage": usage(len(req.Prompt), t.Completion)}, nil)
				last["choices"] = []any{}
				send(last)
			}
			fmt.Fprint(w, "data: [DONE]\n\n")
			if flusher != nil {
				flusher.Flush()
			}
			return
		}
		if !send(chunk(map[string]any{"content": t.Text}, t.Text, nil, map[string]any{"keel": keelOf(t)}, &t)) {
			return
		}
		offset += len(t.Text)
	}
}

func finishReason(r string) string {
	if r == "length" {
		return "length"
	}
	return "stop"
}

func usage(prompt, completion int) map[string]int {
	return map[string]int{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
}

func newID(chat bool) string {
	var b [12]byte
	rand.Read(b[:])
	if chat {
		return "chatcmpl-" + hex.EncodeToString(b[:])
	}
	return "cmpl-" + hex.EncodeToString(b[:])
}
