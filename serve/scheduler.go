// Package serve is keel serve: one loaded model for many clients. A Scheduler owns the model and runs the
// requests waiting for it together in one batch, each row with its own interventions, sampling and limits; the
// HTTP server speaks OpenAI's API with keel's per-request capping and steering on top.
package serve

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
}

// Token is one generated token as the client receives it, or the end of the request (Done).
type Token struct {
	ID   int
	Text string
	// Projections and CapMoves by layer: the token's projection on the axis after the interventions, and the
	// signed amount each cap moved the residual stream along the axis (0 when the cap did not bind).
	Projections map[int]float32
	CapMoves    map[int]float32
	Done        bool
	Reason      string // when Done: "stop" (end of turn or a stop string), "length", "cancelled", "error"
	Err         error
	Completion  int // when Done: tokens generated
}

// batchLinger is how long a batch waits for more requests before it starts: a few decode steps of a small
// model, nothing next to a request's own time.
const batchLinger = 5 * time.Millisecond

// ErrBusy is a full queue: the client should retry later.
var ErrBusy = errors.New("the server's queue is full: retry later")

// ErrClosed is a scheduler that stopped taking requests.
var ErrClosed = errors.New("the server is shutting down")

// Scheduler owns a model: requests queue (bounded), and each batch takes up to MaxBatch of them in arrival order.
type Scheduler struct {
	lm       *model.LM
	axis     *probes.AxisFolder
	maxBatch int
	queue    chan *job
	closed   chan struct{}
	once     sync.Once

	// Figures for /metrics.
	active    atomic.Int64 // rows generating now
	generated atomic.Int64 // tokens sent, all time
	requests  atomic.Int64
	ttftSum   atomic.Int64 // nanoseconds from submit to first token, summed
	ttftCount atomic.Int64
	started   time.Time
}

type job struct {
	ctx     context.Context
	req     Request
	out     chan Token
	queued  time.Time
	first   bool
	text    strings.Builder
	stream  *tokenizer.Stream
	count   int
	capAt   map[int]int // intervention index -> layer, for this row's caps
	ended   bool
	endedBy string
}

// NewScheduler serves lm (with axis, which may be nil: no capping, steering or projections) in batches of up to
// maxBatch rows, with up to queue requests waiting.
func NewScheduler(lm *model.LM, axis *probes.AxisFolder, maxBatch, queue int) *Scheduler {
	return &Scheduler{lm: lm, axis: axis, maxBatch: max(1, maxBatch), queue: make(chan *job, max(1, queue)), closed: make(chan struct{}), started: time.Now()}
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
	// Room for every token and the end: the scheduler never waits on a slow client.
	j := &job{ctx: ctx, req: r, out: make(chan Token, r.MaxTokens+2), queued: time.Now(), stream: tokenizer.NewStreamAfter(s.lm.Tokenizer, r.Prompt[len(r.Prompt)-1])}
	select {
	case <-s.closed:
		return nil, ErrClosed
	default:
	}
	select {
	case s.queue <- j:
		s.requests.Add(1)
		return j.out, nil
	default:
		return nil, ErrBusy
	}
}

// Close stops taking requests; Run returns once the batch in flight ends.
func (s *Scheduler) Close() { s.once.Do(func() { close(s.closed) }) }

// Run serves batches until ctx ends or Close.
func (s *Scheduler) Run(ctx context.Context) {
	for {
		var first *job
		select {
		case <-ctx.Done():
			return
		case <-s.closed:
			return
		case first = <-s.queue:
		}
		batch := []*job{first}
		// Whoever arrives within the linger joins: clients that got their answers from the last batch send
		// their next requests within a few milliseconds, and requests that arrive together share the passes.
		linger := time.NewTimer(batchLinger)
	gather:
		for len(batch) < s.maxBatch {
			select {
			case j := <-s.queue:
				batch = append(batch, j)
			case <-linger.C:
				break gather
			}
		}
		linger.Stop()
		s.runBatch(ctx, batch)
	}
}

// QueueDepth is the number of requests waiting.
func (s *Scheduler) QueueDepth() int { return len(s.queue) }

// Stats are the scheduler's figures for /metrics.
type Stats struct {
	Active, Queued          int
	Requests, TokensSent    int64
	TTFTSeconds, TTFTCount  float64
	TokensPerSecondLifetime float64
	UptimeSeconds           float64
}

// Stats reads the figures.
func (s *Scheduler) Stats() Stats {
	up := time.Since(s.started).Seconds()
	return Stats{Active: int(s.active.Load()), Queued: s.QueueDepth(), Requests: s.requests.Load(), TokensSent: s.generated.Load(),
		TTFTSeconds: float64(s.ttftSum.Load()) / 1e9, TTFTCount: float64(s.ttftCount.Load()),
		TokensPerSecondLifetime: float64(s.generated.Load()) / max(up, 1e-9), UptimeSeconds: up}
}

// runBatch generates every request of the batch together: each row's interventions act on its row alone, each
// row samples with its own settings and seed and stops at its own limit.
func (s *Scheduler) runBatch(ctx context.Context, batch []*job) {
	prompts := make([][]int, len(batch))
	sampling := make([]model.Sampling, len(batch))
	var list []model.Intervention
	projectAt := map[int]int{} // layer -> index of its capture in list
	maxTokens := 0
	// Rows asking the same intervention share one (an intervention on every row needs no mask): a batch of
	// requests that all cap with the calibrated rule runs the cap once per layer, as one request would.
	for b, j := range batch {
		prompts[b], sampling[b] = j.req.Prompt, j.req.Sampling
		maxTokens = max(maxTokens, j.req.MaxTokens)
		j.capAt = map[int]int{}
		lastAt := map[int]int{} // layer -> the list index of this row's last intervention there
		for _, iv := range j.req.Interventions {
			// A layer runs its interventions in list order: sharing one placed before this row's earlier
			// intervention at the layer would run them out of the row's order.
			k := sameIntervention(list, iv)
			if last, ok := lastAt[iv.Layer]; ok && k >= 0 && k < last {
				k = -1
			}
			if k < 0 {
				k = len(list)
				iv.Rows = nil
				list = append(list, iv)
			}
			list[k].Rows = append(list[k].Rows, b)
			lastAt[iv.Layer] = k
			if iv.Kind == model.Cap {
				j.capAt[k] = iv.Layer
			}
		}
	}
	for k := range list {
		if len(list[k].Rows) == len(batch) {
			list[k].Rows = nil
		}
	}
	// One capture per projected layer serves every row (a capture records them all), after the interventions.
	for _, j := range batch {
		for _, l := range j.req.Project {
			if _, ok := projectAt[l]; ok || s.axis == nil {
				continue
			}
			if v, ok := s.axis.Axis.Layers[l]; ok {
				projectAt[l] = len(list)
				list = append(list, model.Intervention{Layer: l, Kind: model.Capture, Vectors: [][]float32{v}, Label: "project"})
			}
		}
	}
	isEOS := map[int]bool{}
	for _, e := range s.lm.EOS() {
		isEOS[e] = true
	}
	s.active.Add(int64(len(batch)))
	defer s.active.Add(-int64(len(batch)))
	onStep := func(st model.Step) (bool, error) {
		j := batch[st.Row]
		if j.ended {
			return true, nil
		}
		if j.ctx.Err() != nil {
			j.ended, j.endedBy = true, "cancelled"
			return true, nil
		}
		if !j.first {
			j.first = true
			s.ttftSum.Add(int64(time.Since(j.queued)))
			s.ttftCount.Add(1)
		}
		j.count++
		t := Token{ID: st.ID}
		if !isEOS[st.ID] {
			t.Text = j.stream.Next(st.ID)
		}
		for _, rec := range st.Records {
			if layer, ok := j.capAt[rec.Intervention]; ok {
				if t.CapMoves == nil {
					t.CapMoves = map[int]float32{}
				}
				t.CapMoves[layer] = rec.Values[0]
			}
		}
		for _, l := range j.req.Project {
			if k, ok := projectAt[l]; ok {
				for _, rec := range st.Records {
					if rec.Intervention == k {
						if t.Projections == nil {
							t.Projections = map[int]float32{}
						}
						t.Projections[l] = rec.Values[0]
					}
				}
			}
		}
		j.text.WriteString(t.Text)
		stop := false
		for _, st := range j.req.Stop {
			if st != "" && strings.Contains(j.text.String(), st) {
				stop, j.endedBy = true, "stop"
			}
		}
		switch {
		case isEOS[st.ID]:
			stop, j.endedBy = true, "stop"
		case !stop && j.count >= j.req.MaxTokens:
			stop, j.endedBy = true, "length"
		}
		j.out <- t
		s.generated.Add(1)
		j.ended = stop
		return stop, nil
	}
	_, err := s.lm.Generate(ctx, prompts, model.GenerateConfig{MaxTokens: maxTokens, Hooks: model.NewHooks(list...), RowSampling: sampling, OnStep: onStep})
	for _, j := range batch {
		end := Token{Done: true, Reason: j.endedBy, Completion: j.count}
		switch {
		case err != nil && !j.ended:
			end.Reason, end.Err = "error", err
		case end.Reason == "":
			end.Reason = "length"
			if j.ctx.Err() != nil {
				end.Reason = "cancelled"
			}
		}
		if tail := j.stream.Flush(); tail != "" && end.Reason != "cancelled" {
			j.out <- Token{Text: tail}
		}
		j.out <- end
		close(j.out)
	}
	s.lm.RT.TrimHostMemory()
}

// sameIntervention is the index in list of an intervention doing what iv does (rows aside), or -1.
func sameIntervention(list []model.Intervention, iv model.Intervention) int {
	for k, o := range list {
		if o.Layer != iv.Layer || o.Kind != iv.Kind || o.Coeff != iv.Coeff || o.Tau != iv.Tau || o.Ceiling != iv.Ceiling || o.Full != iv.Full || len(o.Vectors) != len(iv.Vectors) {
			continue
		}
		same := true
		for v := range o.Vectors {
			if !slices.Equal(o.Vectors[v], iv.Vectors[v]) {
				same = false
				break
			}
		}
		if same {
			return k
		}
	}
	return -1
}
