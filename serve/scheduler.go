// Package serve is keel serve: one loaded model for many clients. A Scheduler owns the model and runs the
// requests waiting for it together in one batch, each row with its own interventions, sampling and limits; the
// HTTP server speaks OpenAI's API with keel's per-request capping and steering on top.
package serve

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/probes"
)

// Request is one generation a client asked for.
type Request struct {
	Prompt    []int
	MaxTokens int
	Sampling  model.Sampling
	Stop      []string
	// Interventions act on this request's row alone (their Rows are the scheduler's to set).
	Interventions []model.Intervention
	// Project are the layers whose axis projection each token reports.
	Project []int
	// Hooks, when set, are live interventions in place of Interventions: read again between decode steps
	// whenever they change (a workbench chat whose controls change mid-reply).
	Hooks *model.Hooks
	// Owner names who asked ("key:..." for an API key, "ssh:NAME" for a workbench user; "" for none): an owner
	// holds at most the scheduler's RowsPerOwner requests, queued and decoding together.
	Owner string
}

// Token is one generated token as the client receives it, or the end of the request (Done).
type Token struct {
	ID   int
	Text string
	// Projections and CapMoves by layer: the token's projection on the axis after the interventions, and the
	// signed amount each cap moved the residual stream along the axis (0 when the cap did not bind).
	Projections map[int]float32
	CapMoves    map[int]float32
	// Records are what the row's interventions recorded at the token, each naming its place in the list in
	// force (Hooks' list, then the projections' captures).
	Records []model.Record
	// Version is the version of the request's Hooks whose list made the token (0 without Hooks).
	Version uint64
	// Logprobs, when the request's sampling asks for them, are the token's log-probabilities (nil for the end
	// of turn, which is not part of the reply).
	Logprobs *model.Logprobs
	// Prev is the token before this one (the prompt's last for the first): the bytes a token contributes depend on it.
	Prev int
	// Flushed is text the decoder held back (an incomplete character) given out at the end, with no token.
	Flushed    bool
	Done       bool
	Reason     string // when Done: "stop" (end of turn or a stop string), "length", "cancelled", "error"
	Err        error
	Completion int // when Done: tokens generated
}

// batchLinger is how long an idle scheduler waits, once a request arrives, for others to start with it: a few
// decode steps of a small model, nothing next to a request's own time.
const batchLinger = 5 * time.Millisecond

// ErrBusy is a full queue: the client should retry later.
var ErrBusy = errors.New("the server's queue is full: retry later")

// ErrClosed is a scheduler that stopped taking requests.
var ErrClosed = errors.New("the server is shutting down")

// Scheduler owns a model: requests queue (bounded) and join one running batch of up to maxBatch rows in arrival
// order, between its decode steps.
type Scheduler struct {
	lm       *model.LM
	axis     *probes.AxisFolder
	maxBatch int
	queue    chan *job
	closed   chan struct{}
	once     sync.Once
	mu       sync.Mutex // Submit against the stop

	// Figures for /metrics.
	active    atomic.Int64 // rows generating now
	generated atomic.Int64 // tokens sent, all time
	requests  atomic.Int64
	ttftSum   atomic.Int64 // nanoseconds from submit to first token, summed
	ttftCount atomic.Int64
	started   time.Time
	eos       map[int]bool
	recent    recentRate // decode steps over the last minute

	// MaxTokens bounds one request's max_tokens whoever submits it (the front ends' own bounds are lower or
	// equal); RowsPerOwner bounds an owner's requests queued and decoding (0: no bound). Set before Run.
	MaxTokens    int
	RowsPerOwner int
	owners       map[string]int // requests queued or decoding, by owner (under mu)
}

type job struct {
	ctx    context.Context
	req    Request
	out    chan Token
	queued time.Time
	first  bool
	text   strings.Builder
	stream *tokenizer.Stream
	count  int
	prev   int // the last token given out (the prompt's last at first)
	// The row's interventions (the request's, then a capture of the axis at each projected layer) and, by their
	// place in that list, the layers of its caps and of its projections.
	ivs      []model.Intervention
	capAt    map[int]int
	projAt   map[int]int
	version  uint64 // of req.Hooks' list when ivs were made from it
	endedBy  string
	admitted bool // joined the batch (an active row)
	done     bool
}

// NewScheduler serves lm (with axis, which may be nil: no capping, steering or projections) to up to maxBatch
// requests at once, with up to queue more waiting.
func NewScheduler(lm *model.LM, axis *probes.AxisFolder, maxBatch, queue int) *Scheduler {
	eos := map[int]bool{}
	for _, e := range lm.EOS() {
		eos[e] = true
	}
	return &Scheduler{lm: lm, axis: axis, maxBatch: max(1, maxBatch), queue: make(chan *job, max(1, queue)), closed: make(chan struct{}), started: time.Now(), eos: eos,
		MaxTokens: DefaultLimits().MaxTokens}
}

// Axis is the axis folder the scheduler projects and intervenes with (nil: none).
func (s *Scheduler) Axis() *probes.AxisFolder { return s.axis }

// Model is the served model.
func (s *Scheduler) Model() *model.LM { return s.lm }

// Submit queues a request; the channel yields its tokens and then one Done token, and is closed after it. A
// cancelled ctx ends the request at its next token (its row is freed).
func (s *Scheduler) Submit(ctx context.Context, r Request) (<-chan Token, error) {
	if len(r.Prompt) == 0 {
		return nil, fmt.Errorf("the prompt is empty")
	}
	if r.MaxTokens < 1 {
		return nil, fmt.Errorf("max_tokens %d: give at least 1", r.MaxTokens)
	}
	if r.MaxTokens > s.MaxTokens {
		return nil, fmt.Errorf("max_tokens %d: this server generates at most %d tokens a request", r.MaxTokens, s.MaxTokens)
	}
	// The model's own stop strings (generation_config.json) end every request, as they end `keel generate`.
	r.Stop = append(append([]string(nil), r.Stop...), s.lm.GenConfig.StopStrings...)
	// Room for every token and the end: the scheduler never waits on a slow client.
	j := &job{ctx: ctx, req: r, out: make(chan Token, r.MaxTokens+2), queued: time.Now(), stream: tokenizer.NewStreamAfter(s.lm.Tokenizer, r.Prompt[len(r.Prompt)-1]), prev: r.Prompt[len(r.Prompt)-1]}
	s.target(j)
	// Submitting and closing exclude each other: a request either queues before the scheduler stops (and gets
	// its Done from the drain) or is refused.
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
		return nil, ErrClosed
	default:
	}
	if r.Owner != "" && s.RowsPerOwner > 0 && s.owners[r.Owner] >= s.RowsPerOwner {
		return nil, fmt.Errorf("%w: %d replies of yours are queued or decoding already (the bound per user is %d)", ErrOwnerBusy, s.owners[r.Owner], s.RowsPerOwner)
	}
	select {
	case s.queue <- j:
		s.requests.Add(1)
		if r.Owner != "" {
			if s.owners == nil {
				s.owners = map[string]int{}
			}
			s.owners[r.Owner]++
		}
		return j.out, nil
	default:
		return nil, ErrBusy
	}
}

// ErrOwnerBusy is an owner at their bound of requests: one of theirs must end first.
var ErrOwnerBusy = errors.New("wait for a reply to end")

// target makes a request's row interventions: its own (or its hooks' list), then a capture of the axis at each
// projected layer; capAt and projAt name the layers of the caps and captures by their place in the list.
func (s *Scheduler) target(j *job) {
	list := j.req.Interventions
	if j.req.Hooks != nil {
		list, j.version = j.req.Hooks.Snapshot()
	}
	j.ivs, j.capAt, j.projAt = nil, map[int]int{}, map[int]int{}
	for _, iv := range list {
		if iv.Kind == model.Cap {
			j.capAt[len(j.ivs)] = iv.Layer
		}
		iv.Rows = nil
		j.ivs = append(j.ivs, iv)
	}
	for _, l := range j.req.Project {
		if s.axis == nil {
			break
		}
		if v, ok := s.axis.Axis.Layers[l]; ok {
			j.projAt[len(j.ivs)] = l
			j.ivs = append(j.ivs, model.Intervention{Layer: l, Kind: model.Capture, Vectors: [][]float32{v}, Label: "project"})
		}
	}
}

// retarget gives the rows whose hooks changed their new interventions before the next step.
func (s *Scheduler) retarget(b *model.Batch, rows map[int]*job) {
	for slot, j := range rows {
		if j.req.Hooks == nil {
			continue
		}
		if _, v := j.req.Hooks.Snapshot(); v == j.version {
			continue
		}
		s.target(j)
		if err := b.Retarget(slot, j.ivs); err != nil {
			b.Leave(slot)
			delete(rows, slot)
			s.finish(j, "error", err)
		}
	}
}

// Close stops taking requests; Run returns once the requests taken so far end.
func (s *Scheduler) Close() { s.once.Do(func() { close(s.closed) }) }

// Run serves requests until ctx ends or Close, in one batch whose rows come and go between decode steps: a
// request joins as soon as a slot is free and its prompt fits the batch's cache, and leaves when it ends.
func (s *Scheduler) Run(ctx context.Context) {
	var b *model.Batch
	rows := map[int]*job{} // slot -> its request
	var waiting []*job     // taken from the queue, in arrival order
	defer func() {
		// Stop taking requests, and end every one taken or still queued.
		s.mu.Lock()
		s.Close()
		s.mu.Unlock()
	queued:
		for {
			select {
			case j := <-s.queue:
				waiting = append(waiting, j)
			default:
				break queued
			}
		}
		for _, j := range rows {
			s.finish(j, "cancelled", nil)
		}
		for _, j := range waiting {
			s.finish(j, "cancelled", nil)
		}
		if b != nil {
			b.Close()
		}
	}()
	for {
		if ctx.Err() != nil {
			return // the requests in flight end as cancelled
		}
		if len(rows) == 0 && len(waiting) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.closed:
				return
			case j := <-s.queue:
				waiting = append(waiting, j)
			}
			// Whoever arrives within the linger starts with it: clients that just got their answers send their
			// next requests within a few milliseconds.
			linger := time.NewTimer(batchLinger)
		gather:
			for len(waiting) < s.maxBatch {
				select {
				case j := <-s.queue:
					waiting = append(waiting, j)
				case <-linger.C:
					break gather
				}
			}
			linger.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	drain:
		for len(waiting) < s.maxBatch {
			select {
			case j := <-s.queue:
				waiting = append(waiting, j)
			default:
				break drain
			}
		}
		// An empty batch keeps its cache when what waits fits it; otherwise a fresh one is sized for what waits,
		// with room for requests that arrive while it decodes.
		need := 0
		for _, j := range waiting[:min(len(waiting), s.maxBatch)] {
			need = max(need, len(j.req.Prompt)+j.req.MaxTokens)
		}
		if len(rows) == 0 && (b == nil || need > b.Len()+b.Room()) {
			if b != nil {
				b.Close()
				b = nil
				s.lm.RT.TrimHostMemory()
			}
			var err error
			if b, err = s.lm.NewBatch(s.maxBatch, 2*need+64); err != nil {
				for _, j := range waiting {
					s.finish(j, "error", err)
				}
				waiting = nil
				continue
			}
		}
		// Admit in arrival order while the first waiting request fits.
		for len(waiting) > 0 {
			j := waiting[0]
			if j.ctx.Err() != nil {
				waiting = waiting[1:]
				s.finish(j, "cancelled", nil)
				continue
			}
			if !b.Fits(len(j.req.Prompt), j.req.MaxTokens) {
				if len(rows) == 0 { // too long for any batch this model can hold
					waiting = waiting[1:]
					s.finish(j, "error", fmt.Errorf("the prompt of %d tokens and max_tokens %d do not fit the model's %d positions", len(j.req.Prompt), j.req.MaxTokens, s.lm.Window()))
					continue
				}
				break
			}
			waiting = waiting[1:]
			if j.req.Hooks != nil {
				s.target(j) // the controls in force as it starts, not as it queued
			}
			joinStart := time.Now()
			st, err := b.Join(j.req.Prompt, j.ivs, j.req.Sampling, j.req.MaxTokens)
			s.recent.addBusy(joinStart, time.Since(joinStart)) // the prompt's prefill, which gives the first token
			if err != nil {
				s.finish(j, "error", err)
				continue
			}
			rows[st.Slot] = j
			j.admitted = true
			s.active.Add(1)
			if s.deliver(j, st) {
				b.Leave(st.Slot)
				delete(rows, st.Slot)
				s.finish(j, j.endedBy, nil)
			}
		}
		if len(rows) == 0 {
			continue
		}
		s.retarget(b, rows)
		stepStart := time.Now()
		steps, err := b.Step()
		s.recent.addBusy(stepStart, time.Since(stepStart))
		if err != nil {
			for slot, j := range rows {
				b.Leave(slot)
				s.finish(j, "error", err)
			}
			rows = map[int]*job{}
			continue
		}
		for _, st := range steps {
			j := rows[st.Slot]
			if s.deliver(j, st) {
				b.Leave(st.Slot)
				delete(rows, st.Slot)
				s.finish(j, j.endedBy, nil)
			}
		}
	}
}

// deliver sends a row's token to its client and reports whether the request has ended (its client left, the
// end of turn, a stop string, max_tokens).
func (s *Scheduler) deliver(j *job, st model.RowStep) bool {
	if j.ctx.Err() != nil {
		j.endedBy = "cancelled"
		return true
	}
	if !j.first {
		j.first = true
		s.ttftSum.Add(int64(time.Since(j.queued)))
		s.ttftCount.Add(1)
	}
	j.count++
	t := Token{ID: st.ID, Records: st.Records, Version: j.version, Prev: j.prev}
	j.prev = st.ID
	if !s.eos[st.ID] {
		t.Text = j.stream.Next(st.ID)
		t.Logprobs = st.Logprobs
	}
	for _, rec := range st.Records {
		if layer, ok := j.capAt[rec.Intervention]; ok {
			if t.CapMoves == nil {
				t.CapMoves = map[int]float32{}
			}
			t.CapMoves[layer] = rec.Values[0]
		}
		if layer, ok := j.projAt[rec.Intervention]; ok {
			if t.Projections == nil {
				t.Projections = map[int]float32{}
			}
			t.Projections[layer] = rec.Values[0]
		}
	}
	j.text.WriteString(t.Text)
	ended := false
	for _, stop := range j.req.Stop {
		if stop != "" && strings.Contains(j.text.String(), stop) {
			ended, j.endedBy = true, "stop"
		}
	}
	switch {
	case s.eos[st.ID]:
		ended, j.endedBy = true, "stop"
	case !ended && j.count >= j.req.MaxTokens:
		ended, j.endedBy = true, "length"
	}
	j.out <- t
	s.generated.Add(1)
	s.recent.addTokens(time.Now(), 1)
	return ended
}

// finish ends a request: the text its stream still holds, then Done with the reason.
func (s *Scheduler) finish(j *job, reason string, err error) {
	if j.done {
		return
	}
	j.done = true
	if j.admitted {
		s.active.Add(-1)
	}
	if o := j.req.Owner; o != "" {
		s.mu.Lock()
		if s.owners[o]--; s.owners[o] <= 0 {
			delete(s.owners, o)
		}
		s.mu.Unlock()
	}
	if tail := j.stream.Flush(); tail != "" && reason != "cancelled" && err == nil {
		j.out <- Token{Text: tail, Flushed: true}
	}
	if reason == "" {
		reason = "length"
	}
	j.out <- Token{Done: true, Reason: reason, Err: err, Completion: j.count}
	close(j.out)
}

// QueueDepth is the number of requests waiting.
func (s *Scheduler) QueueDepth() int { return len(s.queue) }

// Stats are the scheduler's figures for /metrics: counters since the start, and rates over the last minute.
type Stats struct {
	Active, Queued         int
	Requests, TokensSent   int64
	TTFTSeconds, TTFTCount float64
	DecodeSeconds          float64 // time spent in decode steps, all time
	UptimeSeconds          float64
	// Over the last RecentWindow: tokens decoded per second of wall time, and per second of decoding (the
	// rate while busy).
	RecentTokensPerSecond, RecentDecodeTokensPerSecond float64
}

// RecentWindow is the span the recent rates cover.
const RecentWindow = time.Minute

// recentRate keeps, per second of the last minute, the tokens sent and the time spent making them (prefills and
// decode steps).
type recentRate struct {
	mu      sync.Mutex
	secs    [60]int64 // the unix second each slot holds
	tokens  [60]int64
	busy    [60]time.Duration
	busyAll time.Duration
}

// slot is the second at's place in the ring, emptied when it held an older second. Called with mu held.
func (r *recentRate) slot(at time.Time) int {
	sec := at.Unix()
	i := int(sec % 60)
	if r.secs[i] != sec {
		r.secs[i], r.tokens[i], r.busy[i] = sec, 0, 0
	}
	return i
}

// addBusy counts time spent in a decode step or a prefill.
func (r *recentRate) addBusy(at time.Time, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.busy[r.slot(at)] += took
	r.busyAll += took
}

// addTokens counts tokens sent.
func (r *recentRate) addTokens(at time.Time, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tokens[r.slot(at)] += int64(n)
}

// rates are the tokens per second of wall time and of decoding over the last minute, and all decoding time.
func (r *recentRate) rates(now time.Time) (wall, decode float64, busyAll time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var tokens int64
	var busy time.Duration
	for i := range r.secs {
		if now.Unix()-r.secs[i] < 60 {
			tokens += r.tokens[i]
			busy += r.busy[i]
		}
	}
	wall = float64(tokens) / RecentWindow.Seconds()
	if busy > 0 {
		decode = float64(tokens) / busy.Seconds()
	}
	return wall, decode, r.busyAll
}

// Stats reads the figures.
func (s *Scheduler) Stats() Stats {
	wall, decode, busy := s.recent.rates(time.Now())
	return Stats{Active: int(s.active.Load()), Queued: s.QueueDepth(), Requests: s.requests.Load(), TokensSent: s.generated.Load(),
		TTFTSeconds: float64(s.ttftSum.Load()) / 1e9, TTFTCount: float64(s.ttftCount.Load()), DecodeSeconds: busy.Seconds(),
		UptimeSeconds: time.Since(s.started).Seconds(), RecentTokensPerSecond: wall, RecentDecodeTokensPerSecond: decode}
}

// Capacity is how many requests the scheduler holds at once: a full batch decoding and a full queue waiting.
func (s *Scheduler) Capacity() int { return s.maxBatch + cap(s.queue) }
