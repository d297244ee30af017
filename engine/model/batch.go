package model

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/keel-lab/keel/engine/torch"
)

// Batch is a decode batch whose rows come and go between steps (continuous batching): a request joins in a free
// slot, and leaves when it ends, while the others decode on. All slots share one KV cache of a fixed capacity and
// one filled length; a joining prompt is left-padded to end at that length, so it fits when it is no longer than
// what the cache holds so far and its tokens to come fit in the capacity left. Each row has its own
// interventions and sampling, and generates what its request generates alone.
type Batch struct {
	m     *Model
	cache *Cache
	scope *torch.Scope
	rows  []batchRow
	smp   *sampler
	plan  *hookPlan
	index [][]int // slot -> its k-th intervention's place in plan's list
	stale bool    // the rows' interventions changed since plan was compiled
	steps uint64
}

type batchRow struct {
	live bool
	ivs  []Intervention
	ctx  []int // the row's tokens (prompt, then generated) for the repetition penalty
	next int   // the token the next step feeds
}

// RowStep is one row's token from a Batch step, with what the interventions recorded at it.
type RowStep struct {
	Slot     int
	ID       int
	Records  []Record  // the records of the row's own interventions (Intervention indexes its own list)
	Logprobs *Logprobs // when the row's sampling asks for them
}

// NewBatch makes a batch of slots rows over a cache of capacity positions.
func (m *Model) NewBatch(slots, capacity int) (*Batch, error) {
	if slots < 1 || capacity < 2 {
		return nil, fmt.Errorf("batch: %d slots of %d positions", slots, capacity)
	}
	capacity = min(capacity, max(m.Config.MaxPositionEmbeddings, 2))
	c, err := m.NewCache(make([]int, slots), capacity)
	if err != nil {
		return nil, err
	}
	b := &Batch{m: m, cache: c, scope: m.RT.NewScope().NoGrad(), rows: make([]batchRow, slots), smp: &sampler{}}
	for range slots {
		b.smp.cfgs = append(b.smp.cfgs, Sampling{})
		b.smp.rngs = append(b.smp.rngs, rand.New(rand.NewPCG(0, streamKey)))
		b.smp.prompt = append(b.smp.prompt, 0)
	}
	return b, nil
}

// Close frees the batch's cache.
func (b *Batch) Close() {
	b.plan.close()
	b.scope.Close()
	b.cache.Close()
}

// Len is the cache's filled length: a joining prompt may be at most this long (any length while the batch is
// empty).
func (b *Batch) Len() int { return b.cache.Len }

// Room is the positions left in the cache: a joining request's tokens to come must fit in it.
func (b *Batch) Room() int { return b.cache.Cap - b.cache.Len }

// Live is the number of rows decoding.
func (b *Batch) Live() int {
	n := 0
	for _, r := range b.rows {
		if r.live {
			n++
		}
	}
	return n
}

// Free is a free slot, or -1.
func (b *Batch) Free() int {
	for i, r := range b.rows {
		if !r.live {
			return i
		}
	}
	return -1
}

// Fits reports whether a prompt of n tokens with up to maxTokens to generate can join now.
func (b *Batch) Fits(n, maxTokens int) bool {
	if b.Free() < 0 || n < 1 {
		return false
	}
	if b.Live() == 0 {
		return n+maxTokens <= b.cache.Cap
	}
	return n <= b.cache.Len && maxTokens <= b.Room()
}

// Join prefills a prompt into a free slot under the row's own interventions and sampling, and returns the slot
// and the row's first token. An empty batch restarts its cache at the prompt's length.
func (b *Batch) Join(prompt []int, ivs []Intervention, sp Sampling, maxTokens int) (RowStep, error) {
	if !b.Fits(len(prompt), maxTokens) {
		return RowStep{}, fmt.Errorf("batch: a prompt of %d tokens with %d to come does not fit (filled %d of %d positions)", len(prompt), maxTokens, b.cache.Len, b.cache.Cap)
	}
	if err := ownRowOnly(ivs); err != nil {
		return RowStep{}, err
	}
	slot := b.Free()
	if b.Live() == 0 {
		b.cache.Len = len(prompt)
	}
	L := b.cache.Len
	pad := L - len(prompt)
	b.cache.Pad[slot] = pad
	s := b.scope
	defer s.Release()
	// The prompt goes through alone, into the slot's rows of the cache, under its own interventions.
	plan, err := b.m.compileHooks(ivs, 1)
	if err != nil {
		return RowStep{}, err
	}
	defer plan.close()
	view := &Cache{Len: pad, Cap: b.cache.Cap, Pad: []int{pad}}
	for i := range b.cache.K {
		view.K = append(view.K, s.Narrow(b.cache.K[i], 0, int64(slot), 1))
		view.V = append(view.V, s.Narrow(b.cache.V[i], 0, int64(slot), 1))
	}
	last := prompt
	if inertList, generatedOnly := inertOnPrompt(ivs); generatedOnly && len(prompt) > 1 {
		// Interventions on generated tokens only are inert on the prompt before its last position.
		inert, err := b.m.compileHooks(inertList, 1)
		if err != nil {
			return RowStep{}, err
		}
		b.m.forward(s, Pass{IDs: [][]int{prompt[:len(prompt)-1]}, Cache: view, LastOnly: true, plan: inert})
		inert.close()
		if err := s.Err(); err != nil {
			return RowStep{}, err
		}
		view.Len += len(prompt) - 1
		last = prompt[len(prompt)-1:]
	}
	out := b.m.forward(s, Pass{IDs: [][]int{last}, Cache: view, LastOnly: true, plan: plan})
	if err := s.Err(); err != nil {
		return RowStep{}, err
	}
	b.smp.cfgs[slot] = sp
	b.smp.rngs[slot] = rand.New(rand.NewPCG(sp.Seed, streamKey))
	b.smp.prompt[slot] = len(prompt)
	one := &sampler{cfgs: []Sampling{sp}, rngs: []*rand.Rand{b.smp.rngs[slot]}, prompt: []int{len(prompt)}}
	chosen, err := b.m.choose(s, out, one, [][]int{prompt}, []int{0})
	if err != nil {
		return RowStep{}, err
	}
	b.rows[slot] = batchRow{live: true, ivs: ivs, ctx: append(append([]int(nil), prompt...), chosen[0]), next: chosen[0]}
	b.stale = true
	st := RowStep{Slot: slot, ID: chosen[0]}
	if len(one.lps) > 0 {
		st.Logprobs = one.lps[0]
	}
	if out.records != nil {
		st.Records = out.records[0][len(last)-1]
	}
	return st, nil
}

// Retarget replaces a live row's interventions from its next step on (a chat's controls changed mid-reply).
func (b *Batch) Retarget(slot int, ivs []Intervention) error {
	if slot < 0 || slot >= len(b.rows) || !b.rows[slot].live {
		return fmt.Errorf("batch: slot %d has no row to retarget", slot)
	}
	if err := ownRowOnly(ivs); err != nil {
		return err
	}
	b.rows[slot].ivs = ivs
	b.stale = true
	return nil
}

// ownRowOnly refuses interventions that name rows: the batch decides which rows a row's interventions act on.
func ownRowOnly(ivs []Intervention) error {
	for _, iv := range ivs {
		if iv.Rows != nil {
			return fmt.Errorf("batch: a row's interventions act on its row: leave Rows empty")
		}
	}
	return nil
}

// Leave ends a slot's row: its slot is free for the next request.
func (b *Batch) Leave(slot int) {
	if slot >= 0 && slot < len(b.rows) && b.rows[slot].live {
		b.rows[slot] = batchRow{}
		b.stale = true
	}
}

// Step decodes one token for every live row (free slots compute alongside and are ignored).
func (b *Batch) Step() ([]RowStep, error) {
	if b.Live() == 0 {
		return nil, nil
	}
	if b.cache.Len+1 > b.cache.Cap {
		return nil, fmt.Errorf("batch: the cache is full (%d positions)", b.cache.Cap)
	}
	s := b.scope
	defer s.Release()
	if b.stale || b.plan == nil {
		b.steps++
		b.plan.close()
		list, index := rowInterventions(b.rows)
		plan, err := b.m.compileHooks(list, b.steps)
		if err != nil {
			return nil, err
		}
		b.plan, b.index, b.stale = plan, index, false
	}
	// Rows join the lowest free slot, so the live ones sit below hi: the step computes slots [0, hi) only, over
	// a view of the cache's first hi rows.
	hi := 0
	for i, r := range b.rows {
		if r.live {
			hi = i + 1
		}
	}
	cache := b.cache
	if hi < len(b.rows) {
		cache = &Cache{Len: b.cache.Len, Cap: b.cache.Cap, Pad: b.cache.Pad[:hi]}
		for i := range b.cache.K {
			cache.K = append(cache.K, s.Narrow(b.cache.K[i], 0, 0, int64(hi)))
			cache.V = append(cache.V, s.Narrow(b.cache.V[i], 0, 0, int64(hi)))
		}
	}
	ids := make([][]int, hi)
	ctxs := make([][]int, hi)
	for i, r := range b.rows[:hi] {
		ids[i] = []int{r.next}
		ctxs[i] = r.ctx
		if !r.live {
			ids[i] = []int{0}
			ctxs[i] = []int{0}
		}
	}
	out := b.m.forward(s, Pass{IDs: ids, Cache: cache, LastOnly: true, plan: b.plan})
	if err := s.Err(); err != nil {
		return nil, err
	}
	smp := &sampler{cfgs: b.smp.cfgs[:hi], rngs: b.smp.rngs[:hi], prompt: b.smp.prompt[:hi]}
	chosen, err := b.m.choose(s, out, smp, ctxs, make([]int, hi))
	if err != nil {
		return nil, err
	}
	b.cache.Len++
	var steps []RowStep
	for i := range b.rows[:hi] {
		r := &b.rows[i]
		if !r.live {
			continue
		}
		st := RowStep{Slot: i, ID: chosen[i]}
		if i < len(smp.lps) && b.smp.cfgs[i].wantsLogprobs() {
			st.Logprobs = smp.lps[i]
		}
		if out.records != nil {
			for _, rec := range out.records[i][0] {
				if k := slices.Index(b.index[i], rec.Intervention); k >= 0 {
					rec.Intervention = k // the index in the row's own list
					st.Records = append(st.Records, rec)
				}
			}
		}
		r.next = chosen[i]
		r.ctx = append(r.ctx, chosen[i])
		steps = append(steps, st)
	}
	return steps, nil
}

// rowInterventions lays the live rows' interventions out as one list, each acting on its rows: rows asking the
// same intervention share one (a batch of requests capping with one rule runs each cap once), without a mask when
// every live row asks it, unless sharing would run a row's interventions at a layer out of its order. index[slot]
// gives each of the slot's interventions its place in the list.
func rowInterventions(rows []batchRow) (list []Intervention, index [][]int) {
	index = make([][]int, len(rows))
	live := 0
	for i, r := range rows {
		if !r.live {
			continue
		}
		live++
		lastAt := map[int]int{} // layer -> the list place of the row's last intervention there
		for _, iv := range r.ivs {
			k := sameIntervention(list, iv)
			if last, ok := lastAt[iv.Layer]; ok && k >= 0 && k < last {
				k = -1
			}
			if k < 0 || slices.Contains(list[k].Rows, i) {
				k = len(list)
				iv.Rows = nil
				list = append(list, iv)
			}
			list[k].Rows = append(list[k].Rows, i)
			lastAt[iv.Layer] = k
			index[i] = append(index[i], k)
		}
	}
	for k := range list {
		if len(list[k].Rows) == live {
			list[k].Rows = nil // free slots may take it too: their outputs are ignored
		}
	}
	return list, index
}

// sameIntervention is the place in list of an intervention doing what iv does (rows aside), or -1.
func sameIntervention(list []Intervention, iv Intervention) int {
	for k, o := range list {
		if o.Layer != iv.Layer || o.Kind != iv.Kind || o.Coeff != iv.Coeff || o.Tau != iv.Tau || o.Ceiling != iv.Ceiling || o.Full != iv.Full || len(o.Vectors) != len(iv.Vectors) {
			continue
		}
		same := true
		for v := range o.Vectors {
			same = same && slices.Equal(o.Vectors[v], iv.Vectors[v])
		}
		if same {
			return k
		}
	}
	return -1
}
