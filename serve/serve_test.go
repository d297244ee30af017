package serve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/internal/conformance"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/probes"
)

const testKey = "test-key-0123456789abcdef"

// testServer serves the embedded persona model with its axis; the scheduler starts when start is called (so a
// test can queue requests first and have them batched together).
type testServer struct {
	*httptest.Server
	sched *Scheduler
	name  string
	start func()
}

func newTestServer(t *testing.T, keys bool, maxBatch int, limits ...func(*Limits)) *testServer {
	t.Helper()
	rt := torchtest.Runtime(t)
	dir, err := models.Persona(filepath.Join(t.TempDir(), "models"))
	if err != nil {
		t.Fatal(err)
	}
	lm, err := model.Load(rt, dir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	axisDir := filepath.Join(lm.Dir, "axis") // models.Persona unpacks the axis beside the weights
	axis, _, err := probes.OpenAxisFolderFor(axisDir, lm, false)
	if err != nil {
		t.Fatal(err)
	}
	sched := NewScheduler(lm, axis, maxBatch, 64)
	api := &API{Sched: sched, Name: "persona", Limits: DefaultLimits()}
	for _, l := range limits {
		l(&api.Limits)
	}
	if keys {
		api.Keys = map[string]bool{testKey: true}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var once sync.Once
	ts := &testServer{Server: httptest.NewServer(api.Handler()), sched: sched, name: "persona",
		start: func() { once.Do(func() { go func() { sched.Run(ctx); close(done) }() }) }}
	t.Cleanup(func() {
		ts.Close()
		cancel()
		ts.start()
		<-done
		lm.Close()
	})
	return ts
}

func (ts *testServer) post(t *testing.T, ctx context.Context, path, key string, body any) (*http.Response, error) {
	var raw []byte
	switch b := body.(type) {
	case string:
		raw = []byte(b)
	default:
		raw, _ = json.Marshal(b)
	}
	req, err := http.NewRequestWithContext(ctx, "POST", ts.URL+path, bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return http.DefaultClient.Do(req)
}

type chatResponse struct {
	Choices []struct {
		Message      struct{ Role, Content string }
		FinishReason string `json:"finish_reason"`
	}
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	}
	Keel  struct{ Tokens []keelToken }
	Error *struct{ Message, Type, Code string }
}

func (ts *testServer) chat(t *testing.T, keel map[string]any, content string, maxTokens int) chatResponse {
	t.Helper()
	body := map[string]any{"model": ts.name, "messages": []map[string]string{{"role": "user", "content": content}}, "max_tokens": maxTokens, "temperature": 0}
	if keel != nil {
		body["keel"] = keel
	}
	resp, err := ts.post(t, context.Background(), "/v1/chat/completions", testKey, body)
	if err != nil {
		t.Error(err)
		return chatResponse{}
	}
	defer resp.Body.Close()
	var out chatResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || len(out.Choices) != 1 {
		t.Errorf("status %d, %v, %+v", resp.StatusCode, err, out.Error)
	}
	return out
}

// Eight greedy requests with eight different interventions, batched together, answer exactly what each answers
// alone; the interventions change the answers (they are not all the same text); the keel fields report the
// projections asked for and the caps' moves.
func TestBatchedEqualsAlone(t *testing.T) {
	ts := newTestServer(t, true, 8)
	ids := ts.sched.Axis().CapIDs()
	options := []map[string]any{
		nil,
		{"cap": "on", "project": []int{2, 4}},
		{"cap": ids[0]},
		{"cap": ids[len(ids)-1], "project": []int{3}},
		{"steer": map[string]any{"c": -3}},
		{"steer": map[string]any{"c": 2, "layer": 1}},
		{"steer": map[string]any{"c": -4}, "cap": "on"},
		{"project": []int{1}},
	}
	questions := []string{"Who are you?", "What is 3 times 4?", "Tell me about yourself.", "How do I sort a list?"}
	batched := make([]chatResponse, len(options))
	var wg sync.WaitGroup
	for i := range options {
		wg.Add(1)
		go func() { defer wg.Done(); batched[i] = ts.chat(t, options[i], questions[i%len(questions)], 24) }()
	}
	for deadline := time.Now().Add(30 * time.Second); ts.sched.QueueDepth() < len(options); {
		if time.Now().After(deadline) {
			t.Fatalf("only %d requests queued", ts.sched.QueueDepth())
		}
		time.Sleep(5 * time.Millisecond)
	}
	ts.start() // all eight are waiting: the first batch takes them together
	wg.Wait()
	texts := map[string]bool{}
	for i, opt := range options {
		alone := ts.chat(t, opt, questions[i%len(questions)], 24)
		got := batched[i].Choices[0].Message.Content
		if got != alone.Choices[0].Message.Content {
			t.Errorf("request %d (%v): batched %q, alone %q", i, opt, got, alone.Choices[0].Message.Content)
		}
		texts[got] = true
		k := batched[i].Keel.Tokens
		if len(k) != batched[i].Usage.CompletionTokens || len(k) == 0 {
			t.Fatalf("request %d: %d keel tokens for %d completion tokens", i, len(k), batched[i].Usage.CompletionTokens)
		}
		if layers, ok := opt["project"].([]int); ok && len(k[0].Projections) != len(layers) {
			t.Errorf("request %d: projections %v, asked for %v", i, k[0].Projections, layers)
		}
		if opt["cap"] != nil && len(k[0].CapMoves) == 0 {
			t.Errorf("request %d: capped but no cap moves reported", i)
		}
		if opt["cap"] == nil && len(k[0].CapMoves) != 0 {
			t.Errorf("request %d: not capped but cap moves %v", i, k[0].CapMoves)
		}
	}
	if len(texts) < 5 {
		t.Errorf("only %d distinct answers of 8: the interventions are not acting per request", len(texts))
	}
}

// Bad requests get one clear line in OpenAI's error shape, and the server goes on serving.
func TestBadRequestsAreOneClearError(t *testing.T) {
	ts := newTestServer(t, true, 4)
	ts.start()
	good := map[string]any{"model": ts.name, "messages": []map[string]string{{"role": "user", "content": "Hi"}}, "max_tokens": 4}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for a, b := range good {
			m[a] = b
		}
		m[k] = v
		return m
	}
	for _, c := range []struct {
		name, key string
		body      any
		status    int
		code      string
	}{
		{"malformed JSON", testKey, `{"model": "persona", "messages": [`, 400, "invalid_json"},
		{"oversized body", testKey, `{"model": "persona", "prompt": "` + strings.Repeat("x", 2<<20) + `"}`, 413, "request_too_large"},
		{"max_tokens 1e9", testKey, with("max_tokens", 1000000000), 400, "invalid_max_tokens"},
		{"unknown cap id", testKey, with("keel", map[string]any{"cap": "layers_99:100-p0.25"}), 400, "invalid_keel"},
		{"malformed cap id", testKey, with("keel", map[string]any{"cap": "sometimes"}), 400, "invalid_keel"},
		{"steer at no layer", testKey, with("keel", map[string]any{"steer": map[string]any{"c": 1, "layer": 40}}), 400, "invalid_keel"},
		{"unknown model", testKey, with("model", "gpt-5"), 404, "model_not_found"},
		{"wrong key", "wrong-key-0123456789", good, 401, "invalid_api_key"},
		{"no key", "", good, 401, "invalid_api_key"},
		{"bad role", testKey, with("messages", []map[string]string{{"role": "wizard", "content": "Hi"}}), 400, "invalid_messages"},
		{"temperature -1", testKey, with("temperature", -1), 400, "invalid_sampling"},
	} {
		resp, err := ts.post(t, context.Background(), "/v1/chat/completions", c.key, c.body)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var out chatResponse
		json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != c.status || out.Error == nil || out.Error.Code != c.code || out.Error.Message == "" || strings.Contains(out.Error.Message, "\n") {
			t.Errorf("%s: status %d, error %+v; want %d %s", c.name, resp.StatusCode, out.Error, c.status, c.code)
			continue
		}
		t.Logf("%s: %d %s", c.name, resp.StatusCode, out.Error.Message)
	}
	if r := ts.chat(t, nil, "Who are you?", 8); r.Choices[0].Message.Content == "" {
		t.Fatalf("the server stopped answering after the bad requests")
	}
}

// 200 requests from 32 clients at once, streamed and not, a quarter of them dropped by their client mid-way:
// nothing panics, every completed response is well formed, and no row is left generating.
func TestLoadWithDisconnects(t *testing.T) {
	// One key for all 32 clients: the per-key limit is raised above them and the handlers of requests their
	// clients dropped, which linger until the scheduler sees the drop (TestStreamsPerKey checks the limit).
	ts := newTestServer(t, true, 8, func(l *Limits) { l.StreamsPerKey = 64 })
	ts.start()
	var mu sync.Mutex
	completed, dropped, refused := 0, 0, 0
	jobs := make(chan int, 200)
	for i := 0; i < 200; i++ {
		jobs <- i
	}
	close(jobs)
	var wg sync.WaitGroup
	for c := 0; c < 32; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				r := rand.New(rand.NewPCG(uint64(i), 1))
				ctx, cancel := context.WithCancel(context.Background())
				drop := r.IntN(4) == 0
				if drop {
					time.AfterFunc(time.Duration(r.IntN(40))*time.Millisecond, cancel)
				}
				stream := i%2 == 0
				body := map[string]any{"model": ts.name, "messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("Question %d: who are you?", i)}},
					"max_tokens": 16, "temperature": 0.7, "seed": i, "stream": stream, "keel": map[string]any{"cap": []string{"on", "off"}[i%2], "project": []int{2}}}
				resp, err := ts.post(t, ctx, "/v1/chat/completions", testKey, body)
				if err != nil {
					if !drop {
						t.Errorf("request %d: %v", i, err)
					}
					mu.Lock()
					dropped++
					mu.Unlock()
					cancel()
					continue
				}
				raw, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				cancel()
				if err != nil {
					if !drop {
						t.Errorf("request %d: reading: %v", i, err)
					}
					mu.Lock()
					dropped++
					mu.Unlock()
					continue
				}

				if resp.StatusCode == 429 {
					// A client that dropped its last request may start the next before the server has seen the
					// drop: the per-key limit refuses it, in OpenAI's shape.
					var e chatResponse
					if json.Unmarshal(raw, &e) != nil || e.Error == nil || e.Error.Code != "too_many_streams" {
						t.Errorf("request %d: 429 without an error body: %s", i, raw)
					}
					mu.Lock()
					refused++
					mu.Unlock()
					continue
				}
				if err := wellFormed(raw, stream); err != nil {
					t.Errorf("request %d (stream %v): %v", i, stream, err)
					continue
				}
				mu.Lock()
				completed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for deadline := time.Now().Add(20 * time.Second); ts.sched.Stats().Active != 0 || ts.sched.QueueDepth() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("rows still active after every client finished: %+v", ts.sched.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d completed, %d dropped by their clients, %d refused for the key's limit; %+v", completed, dropped, refused, ts.sched.Stats())
	if completed+dropped+refused != 200 || completed < 100 {
		t.Fatalf("%d completed, %d dropped, %d refused of 200", completed, dropped, refused)
	}
	if r := ts.chat(t, nil, "Who are you?", 8); r.Choices[0].Message.Content == "" {
		t.Fatalf("the server stopped answering after the load")
	}
}

// wellFormed checks a completed response: one JSON completion, or an event stream of chunks ending in [DONE].
func wellFormed(raw []byte, stream bool) error {
	if !stream {
		var out chatResponse
		if err := json.Unmarshal(raw, &out); err != nil {
			return fmt.Errorf("not JSON: %v: %.200s", err, raw)
		}
		if len(out.Choices) != 1 || out.Choices[0].FinishReason == "" || out.Usage.CompletionTokens != len(out.Keel.Tokens) {
			return fmt.Errorf("malformed completion: %.300s", raw)
		}
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	var events []string
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, line)
		}
	}
	if len(events) < 3 || events[len(events)-1] != "[DONE]" {
		return fmt.Errorf("the stream does not end in [DONE]: %d events", len(events))
	}
	for _, e := range events[:len(events)-1] {
		var c struct {
			Object  string
			Choices []json.RawMessage
		}
		if err := json.Unmarshal([]byte(e), &c); err != nil || c.Object != "chat.completion.chunk" || len(c.Choices) != 1 {
			return fmt.Errorf("malformed chunk %q", e)
		}
	}
	return nil
}

// The official openai npm client streams a chat completion with keel's extension and reads the per-token keel
// fields; curl does the same without a client; a wrong key is a 401 to both.
func TestOpenAIClientAndCurl(t *testing.T) {
	ts := newTestServer(t, true, 8)
	ts.start()
	dir := clientDir(t)
	out, err := exec.Command("node", filepath.Join(dir, "stream.mjs"), ts.URL+"/v1", testKey, ts.name).CombinedOutput()
	if err != nil {
		t.Fatalf("node stream.mjs: %v\n%s", err, out)
	}
	var res struct {
		Text        string
		Chunks      int
		KeelTokens  int `json:"keel_tokens"`
		Projections int
		CapMoves    int    `json:"cap_moves"`
		WrongKey    int    `json:"wrong_key_status"`
		NonStream   string `json:"non_stream_text"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("openai client: %q in %d chunks, %d with keel fields (%d projections, %d with cap moves); wrong key: %d", res.Text, res.Chunks, res.KeelTokens, res.Projections, res.CapMoves, res.WrongKey)
	if res.Text == "" || res.KeelTokens == 0 || res.KeelTokens != res.Projections || res.CapMoves != res.KeelTokens || res.WrongKey != 401 || res.NonStream != res.Text {
		t.Fatalf("openai client: %+v", res)
	}
	var more struct {
		PartsText string `json:"parts_text"`
		PlainText string `json:"plain_text"`
		Usage     struct {
			After      int `json:"chunks_after_finish"`
			Prompt     int `json:"prompt_tokens"`
			Completion int `json:"completion_tokens"`
			Total      int `json:"total_tokens"`
			Choices    int `json:"choices"`
		}
		Tools struct {
			Status  int
			Code    string
			Message string
		} `json:"tools"`
		Logprobs struct {
			Stream, Whole []struct {
				Token       string
				Logprob     float64
				Bytes       []int
				TopLogprobs []struct {
					Token   string
					Logprob float64
				} `json:"top_logprobs"`
			}
			WholeText   string `json:"whole_text"`
			Completions struct {
				Tokens        []string
				TokenLogprobs []float64            `json:"token_logprobs"`
				TopLogprobs   []map[string]float64 `json:"top_logprobs"`
				TextOffset    []int                `json:"text_offset"`
			}
			CompletionsText string `json:"completions_text"`
		}
	}
	json.Unmarshal(out, &more)
	if more.PartsText == "" || more.PartsText != more.PlainText {
		t.Errorf("a developer message and text parts: %q; the same as system and strings: %q", more.PartsText, more.PlainText)
	}
	if u := more.Usage; u.After != 1 || u.Choices != 0 || u.Prompt == 0 || u.Completion == 0 || u.Total != u.Prompt+u.Completion {
		t.Errorf("include_usage: %+v", u)
	}
	if tl := more.Tools; tl.Status != 400 || tl.Code != "unsupported_parameter" || !strings.Contains(tl.Message, "tools") {
		t.Errorf("tools: %+v", tl)
	}
	// logprobs: the same through streaming and whole, the text they spell the reply's, and each figure keel's own
	// (GenerateText, what keel generate runs, on the same prompt) to 1e-4.
	lp := more.Logprobs
	var spelled strings.Builder
	for _, x := range lp.Whole {
		spelled.WriteString(x.Token)
	}
	if len(lp.Whole) == 0 || len(lp.Stream) != len(lp.Whole) || spelled.String() != lp.WholeText {
		t.Fatalf("logprobs: %d streamed, %d whole spelling %q (the reply %q)", len(lp.Stream), len(lp.Whole), spelled.String(), lp.WholeText)
	}
	lm := ts.sched.Model()
	prompt, _ := tokenizer.ChatPrompt(lm.Tokenizer, []tokenizer.Message{{Role: "user", Content: "Who are you?"}})
	var own []*model.Logprobs
	if _, err := lm.GenerateText(context.Background(), [][]int{prompt}, model.TextConfig{GenerateConfig: model.GenerateConfig{MaxTokens: 8,
		Sampling: model.Sampling{Logprobs: true, TopLogprobs: 3}}, OnText: func(_ string, st model.Step) error {
		own = append(own, st.Logprobs)
		return nil
	}}); err != nil {
		t.Fatal(err)
	}
	for i, x := range lp.Whole {
		s := lp.Stream[i]
		if i >= len(own) || math.Abs(x.Logprob-own[i].Chosen.Logprob) > 1e-4 || s.Token != x.Token || math.Abs(s.Logprob-x.Logprob) > 1e-4 || len(x.TopLogprobs) != 3 {
			t.Fatalf("token %d: whole %+v, streamed %+v, keel's own %+v", i, x, s, own[i])
		}
		for k, top := range x.TopLogprobs {
			if math.Abs(top.Logprob-own[i].Top[k].Logprob) > 1e-4 {
				t.Fatalf("token %d top %d: %+v, keel's own %+v", i, k, top, own[i].Top[k])
			}
		}
	}
	cl := lp.Completions
	if len(cl.Tokens) == 0 || len(cl.TokenLogprobs) != len(cl.Tokens) || len(cl.TopLogprobs) != len(cl.Tokens) || len(cl.TextOffset) != len(cl.Tokens) ||
		strings.Join(cl.Tokens, "") != lp.CompletionsText || len(cl.TopLogprobs[0]) != 2 {
		t.Fatalf("completions logprobs: %+v for %q", cl, lp.CompletionsText)
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is not installed (apt-get install curl): %v", err)
	}
	body := fmt.Sprintf(`{"model": %q, "messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 12, "temperature": 0, "stream": true, "keel": {"cap": "on", "project": [2]}}`, ts.name)
	raw, err := exec.Command(curl, "-sN", "-H", "Authorization: Bearer "+testKey, "-H", "Content-Type: application/json", "-d", body, ts.URL+"/v1/chat/completions").Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := wellFormed(raw, true); err != nil || !bytes.Contains(raw, []byte(`"projections":{"2":`)) || !bytes.Contains(raw, []byte(`"cap_moves":`)) {
		t.Fatalf("curl: %v\n%s", err, raw)
	}
	code, _ := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer nope", "-d", body, ts.URL+"/v1/chat/completions").Output()
	if string(code) != "401" {
		t.Fatalf("curl with a wrong key: %s", code)
	}
	// A GET on a POST route is 405 with Allow; a 900 KB cap string comes back as a short prefix.
	head, _ := exec.Command(curl, "-s", "-i", "-H", "Authorization: Bearer "+testKey, ts.URL+"/v1/chat/completions").Output()
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 405")) || !bytes.Contains(head, []byte("Allow: POST")) {
		t.Fatalf("curl GET: %s", head)
	}
	huge := fmt.Sprintf(`{"model": %q, "messages": [{"role": "user", "content": "Hi"}], "keel": {"cap": "%s"}}`, ts.name, strings.Repeat("x", 900_000))
	bodyFile := filepath.Join(t.TempDir(), "huge.json")
	os.WriteFile(bodyFile, []byte(huge), 0o644)
	echo, _ := exec.Command(curl, "-s", "-w", "\n%{http_code}", "-H", "Authorization: Bearer "+testKey, "-H", "Content-Type: application/json", "--data-binary", "@"+bodyFile, ts.URL+"/v1/chat/completions").Output()
	if !bytes.HasSuffix(echo, []byte("\n400")) || len(echo) > 1024 {
		t.Fatalf("curl with a 900 KB cap: %d bytes back: %.300s", len(echo), echo)
	}
	// Past the model's window: 400 context_length_exceeded before any token, streamed or not, from the official
	// client and from curl.
	var tooLong struct {
		TooLong map[string]any `json:"too_long"`
	}
	json.Unmarshal(out, &tooLong)
	if tooLong.TooLong["status"] != 400.0 || tooLong.TooLong["code"] != "context_length_exceeded" ||
		tooLong.TooLong["stream_status"] != 400.0 || tooLong.TooLong["stream_code"] != "context_length_exceeded" {
		t.Fatalf("openai client past the window: %v", tooLong.TooLong)
	}
	long := fmt.Sprintf(`{"model": %q, "messages": [{"role": "user", "content": %q}], "max_tokens": 64, "stream": true}`, ts.name, strings.Repeat("the sea ", 2000))
	raw, err = exec.Command(curl, "-s", "-w", "\n%{http_code}", "-H", "Authorization: Bearer "+testKey, "-d", long, ts.URL+"/v1/chat/completions").Output()
	if err != nil || !bytes.HasSuffix(raw, []byte("\n400")) || !bytes.Contains(raw, []byte(`"code":"context_length_exceeded"`)) || bytes.Contains(raw, []byte("data:")) {
		t.Fatalf("curl past the window: %v\n%s", err, raw)
	}
	fits := fmt.Sprintf(`{"model": %q, "messages": [{"role": "user", "content": %q}], "max_tokens": 2000}`, ts.name, "Who are you?")
	raw, _ = exec.Command(curl, "-s", "-H", "Authorization: Bearer "+testKey, "-d", fits, ts.URL+"/v1/chat/completions").Output()
	if !bytes.Contains(raw, []byte("lower max_tokens to ")) {
		t.Fatalf("max_tokens past the window names what fits: %s", raw)
	}
}

// clientDir is conformance/openai with its node_modules (make test installs them).
func clientDir(t *testing.T) string { return conformance.Dir(t, "openai", "openai") }

// A key may have StreamsPerKey requests in flight; the next is refused with 429 in OpenAI's shape until one ends.
func TestStreamsPerKey(t *testing.T) {
	ts := newTestServer(t, true, 8, func(l *Limits) { l.StreamsPerKey = 2 })
	// The scheduler is not started: the first two requests wait in the queue, holding the key's slots.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := map[string]any{"model": ts.name, "messages": []map[string]string{{"role": "user", "content": "Hi"}}, "max_tokens": 4}
	for i := 0; i < 2; i++ {
		go func() {
			if resp, err := ts.post(t, ctx, "/v1/chat/completions", testKey, body); err == nil {
				resp.Body.Close()
			}
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); ts.sched.QueueDepth() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first two requests did not queue")
		}
	}
	resp, err := ts.post(t, context.Background(), "/v1/chat/completions", testKey, body)
	if err != nil {
		t.Fatal(err)
	}
	var out chatResponse
	json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != 429 || out.Error == nil || out.Error.Code != "too_many_streams" {
		t.Fatalf("third request: %d %+v", resp.StatusCode, out.Error)
	}
	// Once the waiting requests' clients go away and the scheduler sees it, the slots come back.
	cancel()
	ts.start()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := ts.post(t, context.Background(), "/v1/chat/completions", testKey, body)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the key's slots were not given back: %d", resp.StatusCode)
		}
	}
}

// Continuous batching: requests that arrive while a long one decodes join it between steps (they end before it
// does, instead of waiting for it), and each answers exactly what it answers alone.
func TestRequestsJoinARunningBatch(t *testing.T) {
	ts := newTestServer(t, true, 8)
	ts.start()
	long := make(chan time.Time, 1)
	var longReply chatResponse
	go func() {
		// Steered this hard the model never ends its turn: the request decodes all its tokens.
		longReply = ts.chat(t, map[string]any{"steer": map[string]any{"c": -3}}, "Tell me a long story about the sea.", 200)
		long <- time.Now()
	}()
	for deadline := time.Now().Add(20 * time.Second); ts.sched.Stats().Active == 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the long request never started")
		}
	}
	time.Sleep(50 * time.Millisecond) // a few of its tokens are out
	options := []map[string]any{nil, {"steer": map[string]any{"c": -3}}, {"cap": "on", "project": []int{3}}}
	joined := make([]chatResponse, len(options))
	ended := make([]time.Time, len(options))
	var wg sync.WaitGroup
	for i := range options {
		wg.Add(1)
		go func() {
			defer wg.Done()
			joined[i] = ts.chat(t, options[i], "Who are you?", 12)
			ended[i] = time.Now()
		}()
	}
	wg.Wait()
	longEnd := <-long
	if len(longReply.Choices) != 1 || longReply.Choices[0].FinishReason != "length" {
		t.Fatalf("the long request ended early (%+v): the test needs it to decode all 200 tokens", longReply.Choices)
	}
	for i, opt := range options {
		if !ended[i].Before(longEnd) {
			t.Errorf("request %d ended after the long one: it waited for the batch instead of joining", i)
		}
		alone := ts.chat(t, opt, "Who are you?", 12)
		if joined[i].Choices[0].Message.Content != alone.Choices[0].Message.Content {
			t.Errorf("request %d (%v): joined %q, alone %q", i, opt, joined[i].Choices[0].Message.Content, alone.Choices[0].Message.Content)
		}
	}
}

// An owner holds at most RowsPerOwner requests, queued and decoding together, and gets the slot back when one
// ends; a request past the scheduler's token bound is refused before its channel is made (a billion tokens once
// sized a channel that took the whole server down).
func TestRowsPerOwnerAndTheTokenBound(t *testing.T) {
	ts := newTestServer(t, true, 8)
	ts.sched.RowsPerOwner = 2
	prompt := ts.sched.Model().Tokenizer.Encode("Hello", true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var held []<-chan Token
	for i := 0; i < 2; i++ {
		ch, err := ts.sched.Submit(ctx, Request{Prompt: prompt, MaxTokens: 8, Owner: "ssh:alice", Sampling: model.Sampling{Temperature: 0}})
		if err != nil {
			t.Fatalf("request %d of 2: %v", i, err)
		}
		held = append(held, ch)
	}
	if _, err := ts.sched.Submit(ctx, Request{Prompt: prompt, MaxTokens: 8, Owner: "ssh:alice"}); err == nil || !strings.Contains(err.Error(), "the bound per user is 2") {
		t.Fatalf("a third request of one owner: %v", err)
	}
	if _, err := ts.sched.Submit(ctx, Request{Prompt: prompt, MaxTokens: 8, Owner: "ssh:bob"}); err != nil {
		t.Fatalf("another owner: %v", err)
	}
	if _, err := ts.sched.Submit(ctx, Request{Prompt: prompt, MaxTokens: 1_000_000_000, Owner: "ssh:bob"}); err == nil || !strings.Contains(err.Error(), "at most 4096 tokens") {
		t.Fatalf("a billion tokens: %v", err)
	}
	ts.start()
	for t := range held[0] {
		_ = t
	}
	if _, err := ts.sched.Submit(ctx, Request{Prompt: prompt, MaxTokens: 8, Owner: "ssh:alice"}); err != nil {
		t.Fatalf("after one of alice's requests ended: %v", err)
	}
}

// /metrics names what it measures: counters since the start, and over the last minute the tokens per second of
// wall time apart from the tokens per second of decoding (the rate while busy, which idle time does not dilute).
func TestMetricsRatesAreNamed(t *testing.T) {
	ts := newTestServer(t, true, 8)
	ts.start()
	out := ts.chat(t, nil, "Who are you?", 24)
	time.Sleep(1500 * time.Millisecond) // idle: the wall rate falls, the decode rate does not
	resp, err := http.Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	values := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		var name string
		var v float64
		if _, err := fmt.Sscanf(line, "%s %g", &name, &v); err == nil && !strings.HasPrefix(name, "#") {
			values[name] = v
		}
	}
	tokens := values["keel_tokens_generated_total"]
	if tokens != float64(out.Usage.CompletionTokens) || values["keel_requests_total"] != 1 {
		t.Fatalf("counters: %v (the reply had %d tokens)", values, out.Usage.CompletionTokens)
	}
	wall, decode, busy := values["keel_tokens_per_second_1m"], values["keel_decode_tokens_per_second_1m"], values["keel_decode_seconds_total"]
	if busy <= 0 || decode <= wall || wall != tokens/60 || math.Abs(decode-tokens/busy) > 1e-6*decode {
		t.Fatalf("rates: wall %g, decode %g, decoding %g s for %g tokens", wall, decode, busy, tokens)
	}
}
