package train

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestPackKeepsExamplesWhole packs a mix of short chats, conversations nearly a block long and texts longer than
// a block, and checks the three promises: every block is exactly seqLen+1 tokens, every loss token of every
// example is a target exactly once, and an example that fits in a block sits in one block, unbroken.
func TestPackKeepsExamplesWhole(t *testing.T) {
	const seqLen = 64
	rng := rand.New(rand.NewPCG(3, 4))
	var examples []Example
	next := 1
	for i := 0; i < 300; i++ {
		n := 3 + rng.IntN(20)
		switch {
		case i%10 == 0:
			n = 40 + rng.IntN(seqLen-40) // a long conversation that fits
		case i%37 == 0:
			n = seqLen*2 + rng.IntN(seqLen) // longer than a block
		}
		ex := Example{}
		for j := 0; j < n; j++ {
			ex.IDs = append(ex.IDs, next) // every token distinct, so its place can be found
			ex.Loss = append(ex.Loss, j > 0 && rng.IntN(4) != 0)
			next++
		}
		examples = append(examples, ex)
	}
	blocks := Pack(examples, seqLen)
	targets := map[int]int{}
	where := map[int]int{} // token -> block
	padded := 0
	for b, blk := range blocks {
		if len(blk.IDs) != seqLen+1 || len(blk.Loss) != seqLen+1 {
			t.Fatalf("block %d has %d ids, %d loss flags; want %d", b, len(blk.IDs), len(blk.Loss), seqLen+1)
		}
		for i, id := range blk.IDs {
			if i > 0 && id == blk.IDs[i-1] {
				padded++
			}
			if blk.Loss[i] {
				if i == 0 {
					t.Fatalf("block %d: its first token is marked as a target but has no input before it", b)
				}
				targets[id]++
			}
			if _, seen := where[id]; !seen {
				where[id] = b
			}
		}
	}
	total := 0
	for _, ex := range examples {
		for j, id := range ex.IDs {
			if ex.Loss[j] {
				total++
				if targets[id] != 1 {
					t.Fatalf("token %d is a target %d times, want 1", id, targets[id])
				}
			}
		}
		if len(ex.IDs) <= seqLen+1 {
			b := where[ex.IDs[0]]
			i := slices.Index(blocks[b].IDs, ex.IDs[0])
			if i < 0 || i+len(ex.IDs) > len(blocks[b].IDs) || !slices.Equal(blocks[b].IDs[i:i+len(ex.IDs)], ex.IDs) {
				t.Fatalf("example of %d tokens starting with %d is split across blocks", len(ex.IDs), ex.IDs[0])
			}
		}
	}
	if len(targets) != total {
		t.Fatalf("%d distinct targets, want %d (a padding or stray token was marked)", len(targets), total)
	}
	if waste := float64(padded) / float64(len(blocks)*(seqLen+1)); waste > 0.1 {
		t.Fatalf("padding is %.0f%% of the packed tokens; first-fit should keep it under 10%%", 100*waste)
	}
}

// A long example is cut into blocks overlapping by one context token, as before, in time and memory linear in
// its length: one message of millions of tokens packs at once.
func TestPackLongExamples(t *testing.T) {
	// The cut written the plain way, as the reference for small examples.
	plain := func(ex Example, size int) []Example {
		var out []Example
		for len(ex.IDs) > size {
			out = append(out, Example{IDs: ex.IDs[:size], Loss: ex.Loss[:size]})
			ex = Example{IDs: ex.IDs[size-1:], Loss: append([]bool{false}, ex.Loss[size:]...)}
		}
		return out
	}
	rng := rand.New(rand.NewPCG(8, 9))
	for trial := 0; trial < 50; trial++ {
		n, seq := 1+rng.IntN(400), 8+rng.IntN(40)
		ex := Example{IDs: make([]int, n), Loss: make([]bool, n)}
		for i := range ex.IDs {
			ex.IDs[i], ex.Loss[i] = rng.IntN(1000), rng.IntN(2) == 0
		}
		got, want := Pack([]Example{ex}, seq), plain(ex, seq+1)
		if len(got) < len(want) {
			t.Fatalf("n %d seq %d: %d blocks, the plain cut makes %d full ones", n, seq, len(got), len(want))
		}
		for i := range want {
			if !slices.Equal(got[i].IDs, want[i].IDs) || !slices.Equal(got[i].Loss, want[i].Loss) {
				t.Fatalf("n %d seq %d: block %d differs from the plain cut", n, seq, i)
			}
		}
	}
	huge := Example{IDs: make([]int, 4_000_000), Loss: make([]bool, 4_000_000)}
	// Blocks of 65 tokens stepping by 64: 62,499 full ones and the padded rest.
	if blocks := Pack([]Example{huge}, 64); len(blocks) != 62_500 {
		t.Fatalf("4M tokens at 64: %d blocks", len(blocks))
	}
}
