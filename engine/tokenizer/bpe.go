package tokenizer

import (
	"container/heap"
	"fmt"
	"sync"
)

// bpe is the tokenizer.json BPE model: merges by rank (lowest first, leftmost on ties), with optional
// ignore_merges (a whole word in the vocabulary is one token) and byte_fallback ("<0xNN>" tokens for unknown
// pieces).
type bpe struct {
	vocab        map[string]int
	ranks        map[[2]string]int
	unk          string
	unkID        int // -1 when the vocabulary has no unknown token
	byteFallback bool
	ignoreMerges bool
	fuseUnk      bool
	endOfWord    string
	// The caches make a tokenizer shared by goroutines (a server's handlers) a shared writer: mu guards them.
	mu      sync.RWMutex
	cache   map[string][]string
	idCache map[string][]int // word -> final ids (after byte fallback and unknowns)
}

const bpeCacheMax = 1 << 16

func newBPE(vocab map[string]int, merges [][2]string, unk string, byteFallback, ignoreMerges, fuseUnk bool, endOfWord string) *bpe {
	ranks := make(map[[2]string]int, len(merges))
	for i, m := range merges {
		if _, dup := ranks[m]; !dup {
			ranks[m] = i
		}
	}
	return &bpe{vocab: vocab, ranks: ranks, unk: unk, byteFallback: byteFallback, ignoreMerges: ignoreMerges, fuseUnk: fuseUnk, endOfWord: endOfWord, cache: map[string][]string{}, idCache: map[string][]int{}, unkID: -1}
}

// node is one symbol of a word being merged (a doubly linked list, so merges are O(log n)).
type node struct {
	tok        string
	prev, next *node
	deleted    bool
}

type candidate struct {
	left  *node
	right *node
	rank  int
	pos   int // tie-break: leftmost first
}

type candidates []candidate

func (c candidates) Len() int { return len(c) }
func (c candidates) Less(i, j int) bool {
	if c[i].rank != c[j].rank {
		return c[i].rank < c[j].rank
	}
	return c[i].pos < c[j].pos
}
func (c candidates) Swap(i, j int) { c[i], c[j] = c[j], c[i] }
func (c *candidates) Push(x any)   { *c = append(*c, x.(candidate)) }
func (c *candidates) Pop() any {
	old := *c
	x := old[len(old)-1]
	*c = old[:len(old)-1]
	return x
}

// word applies the merges to one pre-tokenized word.
func (b *bpe) word(w string) []string {
	if w == "" {
		return nil
	}
	b.mu.RLock()
	r, ok := b.cache[w]
	b.mu.RUnlock()
	if ok {
		return r
	}
	runes := []rune(w)
	if len(runes) == 1 {
		out := []string{w + b.endOfWord}
		return out
	}
	nodes := make([]*node, len(runes))
	for i, r := range runes {
		nodes[i] = &node{tok: string(r)}
		if i > 0 {
			nodes[i].prev = nodes[i-1]
			nodes[i-1].next = nodes[i]
		}
	}
	if b.endOfWord != "" {
		nodes[len(nodes)-1].tok += b.endOfWord
	}
	// pos numbers nodes in creation order, which is left-to-right among live nodes at any time: a merged node
	// takes its left part's position.
	pos := map[*node]int{}
	for i, n := range nodes {
		pos[n] = i
	}
	h := &candidates{}
	push := func(l *node) {
		if l == nil || l.next == nil {
			return
		}
		if rank, ok := b.ranks[[2]string{l.tok, l.next.tok}]; ok {
			heap.Push(h, candidate{left: l, right: l.next, rank: rank, pos: pos[l]})
		}
	}
	for _, n := range nodes[:len(nodes)-1] {
		push(n)
	}
	head := nodes[0]
	for h.Len() > 0 {
		c := heap.Pop(h).(candidate)
		if c.left.deleted || c.right.deleted || c.left.next != c.right {
			continue
		}
		merged := &node{tok: c.left.tok + c.right.tok, prev: c.left.prev, next: c.right.next}
		pos[merged] = pos[c.left]
		c.left.deleted, c.right.deleted = true, true
		if merged.prev != nil {
			merged.prev.next = merged
		} else {
			head = merged
		}
		if merged.next != nil {
			merged.next.prev = merged
		}
		push(merged.prev)
		push(merged)
	}
	var out []string
	for n := head; n != nil; n = n.next {
		out = append(out, n.tok)
	}
	if len(runes) < 256 {
		b.mu.Lock()
		if len(b.cache) < bpeCacheMax {
			b.cache[w] = out
		}
		b.mu.Unlock()
	}
	return out
}

// encode turns pre-tokenized words into tokens (strings of the vocabulary, or the unknown token).
func (b *bpe) encode(words []string) []string {
	var out []string
	for _, w := range words {
		if b.ignoreMerges {
			if _, ok := b.vocab[w]; ok {
				out = append(out, w)
				continue
			}
		}
		for _, t := range b.word(w) {
			if _, ok := b.vocab[t]; ok {
				out = append(out, t)
				continue
			}
			if b.byteFallback {
				all := true
				var bytes []string
				for _, c := range []byte(t) {
					bt := fmt.Sprintf("<0x%02X>", c)
					if _, ok := b.vocab[bt]; !ok {
						all = false
						break
					}
					bytes = append(bytes, bt)
				}
				if all {
					out = append(out, bytes...)
					continue
				}
			}
			out = append(out, b.unk)
		}
	}
	if b.fuseUnk {
		out = b.fuse(out)
	}
	return out
}

// encodeIDs is encode followed by the vocabulary lookup, with each word's ids cached.
func (b *bpe) encodeIDs(words []string) []int {
	var out []int
	for _, w := range words {
		b.mu.RLock()
		ids, ok := b.idCache[w]
		b.mu.RUnlock()
		if ok {
			out = append(out, ids...)
			continue
		}
		toks := b.encode([]string{w})
		ids = make([]int, len(toks))
		for i, t := range toks {
			id, ok := b.vocab[t]
			if !ok {
				id = b.unkID
			}
			ids[i] = id
		}
		if len(w) < 256 {
			b.mu.Lock()
			if len(b.idCache) < bpeCacheMax {
				b.idCache[w] = ids
			}
			b.mu.Unlock()
		}
		out = append(out, ids...)
	}
	return out
}

// fuse merges runs of unknown tokens into one.
func (b *bpe) fuse(toks []string) []string {
	var out []string
	unknown := func(t string) bool { _, ok := b.vocab[t]; return !ok || t == b.unk }
	for i := 0; i < len(toks); i++ {
		if unknown(toks[i]) && len(out) > 0 && unknown(out[len(out)-1]) {
			continue
		}
		out = append(out, toks[i])
	}
	return out
}
