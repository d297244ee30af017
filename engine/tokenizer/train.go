package tokenizer

import (
	"bufio"
	"container/heap"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/keel-lab/keel/internal/atomicfile"
)

// TrainConfig configures byte-level BPE training.
type TrainConfig struct {
	VocabSize     int      // total, special tokens included
	MinFrequency  int      // a pair must occur this often to be merged (default 2)
	SpecialTokens []string // appended after the merges; default ChatML's
	// SingleDigits splits numbers into one token per digit (Qwen's split) rather than runs of up to three
	// (Llama 3's): every number then reads the same way, which small models copy and add more reliably.
	SingleDigits bool
}

// ChatMLTemplate is the chat template trained tokenizers carry.
const ChatMLTemplate = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

// trainSplit is the pre-tokenizer split trained tokenizers use (GPT-4-style words, digits in threes);
// trainSplitDigits is the same with one digit per piece.
const (
	trainSplit       = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	trainSplitDigits = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// Train learns a byte-level BPE from text and returns tokenizer.json and tokenizer_config.json contents.
func Train(corpus io.Reader, cfg TrainConfig) (tokenizerJSON, configJSON []byte, err error) {
	if cfg.MinFrequency <= 0 {
		cfg.MinFrequency = 2
	}
	if len(cfg.SpecialTokens) == 0 {
		cfg.SpecialTokens = []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
	}
	if cfg.VocabSize < 256+len(cfg.SpecialTokens) {
		return nil, nil, fmt.Errorf("vocab size %d is below the 256 byte tokens plus %d special tokens", cfg.VocabSize, len(cfg.SpecialTokens))
	}
	pattern := trainSplit
	if cfg.SingleDigits {
		pattern = trainSplitDigits
	}
	split, err := compileJSRegex(pattern)
	if err != nil {
		return nil, nil, err
	}
	counts := map[string]int{}
	sc := bufio.NewScanner(corpus)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	sc.Split(scanLinesKeepNewline)
	for sc.Scan() {
		for _, w := range split.matches(sc.Text()) {
			counts[byteLevelEncode(w)]++
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading the corpus: %w", err)
	}
	if len(counts) == 0 {
		return nil, nil, fmt.Errorf("the corpus is empty")
	}
	tr := newTrainer(counts)
	merges := tr.run(cfg.VocabSize-len(cfg.SpecialTokens), cfg.MinFrequency)

	vocab := map[string]int{}
	for i, t := range tr.tokens {
		vocab[t] = i
	}
	var added []map[string]any
	for i, s := range cfg.SpecialTokens {
		id := len(tr.tokens) + i
		vocab[s] = id
		added = append(added, map[string]any{"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
	}
	tj := map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": added,
		"normalizer":   nil,
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": pattern}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
		}},
		"post_processor": map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
	}
	tc := map[string]any{
		"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": nil, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
		"unk_token": nil, "clean_up_tokenization_spaces": false, "model_max_length": 4096, "chat_template": ChatMLTemplate,
		"additional_special_tokens": cfg.SpecialTokens,
	}
	if tokenizerJSON, err = json.MarshalIndent(tj, "", " "); err != nil {
		return nil, nil, err
	}
	configJSON, err = json.MarshalIndent(tc, "", "  ")
	return tokenizerJSON, configJSON, err
}

// TrainFile trains on a corpus file and writes tokenizer.json and tokenizer_config.json into outDir.
func TrainFile(corpusPath, outDir string, cfg TrainConfig) error {
	f, err := os.Open(corpusPath)
	if err != nil {
		return err
	}
	defer f.Close()
	tj, tc, err := Train(f, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", corpusPath, err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tokenizer.json": tj, "tokenizer_config.json": tc} {
		if err := atomicfile.Write(filepath.Join(outDir, name), func(w *os.File) error { _, err := w.Write(data); return err }); err != nil {
			return err
		}
	}
	return nil
}

func scanLinesKeepNewline(data []byte, atEOF bool) (int, []byte, error) {
	for i, c := range data {
		if c == '\n' {
			return i + 1, data[:i+1], nil
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// trainer holds the words as symbol-id sequences and the pair statistics.
type trainer struct {
	tokens []string
	words  [][]int
	freq   []int
	pairs  map[[2]int]int
	where  map[[2]int]map[int]bool
	queue  pairQueue
}

func newTrainer(counts map[string]int) *trainer {
	tr := &trainer{pairs: map[[2]int]int{}, where: map[[2]int]map[int]bool{}}
	for b := 0; b < 256; b++ {
		tr.tokens = append(tr.tokens, string(byteToRune[b]))
	}
	words := make([]string, 0, len(counts))
	for w := range counts {
		words = append(words, w)
	}
	sort.Strings(words) // a fixed order makes training deterministic
	for wi, w := range words {
		var syms []int
		for _, r := range w {
			syms = append(syms, int(runeToByte[r]))
		}
		tr.words = append(tr.words, syms)
		tr.freq = append(tr.freq, counts[w])
		for i := 0; i+1 < len(syms); i++ {
			tr.add([2]int{syms[i], syms[i+1]}, wi, counts[w])
		}
	}
	for p, c := range tr.pairs {
		heap.Push(&tr.queue, pairCount{p, c})
	}
	return tr
}

func (tr *trainer) add(p [2]int, word, n int) {
	tr.pairs[p] += n
	if tr.where[p] == nil {
		tr.where[p] = map[int]bool{}
	}
	tr.where[p][word] = true
}

// run merges until the vocabulary has size tokens or no pair is frequent enough; it returns the merges.
func (tr *trainer) run(size, minFreq int) [][2]string {
	var merges [][2]string
	for len(tr.tokens) < size && tr.queue.Len() > 0 {
		top := heap.Pop(&tr.queue).(pairCount)
		if cur := tr.pairs[top.pair]; cur != top.count {
			if cur > 0 {
				heap.Push(&tr.queue, pairCount{top.pair, cur})
			}
			continue
		}
		if top.count < minFreq {
			break
		}
		a, b := top.pair[0], top.pair[1]
		id := len(tr.tokens)
		tr.tokens = append(tr.tokens, tr.tokens[a]+tr.tokens[b])
		merges = append(merges, [2]string{tr.tokens[a], tr.tokens[b]})
		changed := map[[2]int]bool{}
		words := make([]int, 0, len(tr.where[top.pair]))
		for w := range tr.where[top.pair] {
			words = append(words, w)
		}
		sort.Ints(words)
		for _, w := range words {
			syms, n := tr.words[w], tr.freq[w]
			for i := 0; i+1 < len(syms); i++ {
				tr.pairs[[2]int{syms[i], syms[i+1]}] -= n
				changed[[2]int{syms[i], syms[i+1]}] = true
			}
			var out []int
			for i := 0; i < len(syms); i++ {
				if i+1 < len(syms) && syms[i] == a && syms[i+1] == b {
					out = append(out, id)
					i++
				} else {
					out = append(out, syms[i])
				}
			}
			tr.words[w] = out
			for i := 0; i+1 < len(out); i++ {
				p := [2]int{out[i], out[i+1]}
				tr.add(p, w, n)
				changed[p] = true
			}
		}
		delete(tr.pairs, top.pair)
		delete(tr.where, top.pair)
		for p := range changed {
			if c := tr.pairs[p]; c > 0 {
				heap.Push(&tr.queue, pairCount{p, c})
			} else {
				delete(tr.pairs, p)
				delete(tr.where, p)
			}
		}
	}
	return merges
}

type pairCount struct {
	pair  [2]int
	count int
}

// pairQueue orders by count, then by pair ids (lower first) so ties resolve the same way every run.
type pairQueue []pairCount

func (q pairQueue) Len() int { return len(q) }
func (q pairQueue) Less(i, j int) bool {
	if q[i].count != q[j].count {
		return q[i].count > q[j].count
	}
	if q[i].pair[0] != q[j].pair[0] {
		return q[i].pair[0] < q[j].pair[0]
	}
	return q[i].pair[1] < q[j].pair[1]
}
func (q pairQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *pairQueue) Push(x any)   { *q = append(*q, x.(pairCount)) }
func (q *pairQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}
