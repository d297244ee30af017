package train

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/keel-lab/keel/engine/tokenizer"
)

// Example is one tokenized training text; Loss marks the tokens the loss counts (the assistant's for chats).
type Example struct {
	IDs  []int
	Loss []bool
}

// record is one line of a JSONL dataset: chat messages, or plain text.
type record struct {
	Messages []tokenizer.TemplateMessage `json:"messages"`
	Text     *string                     `json:"text"`
	Reward   *float64                    `json:"reward"`
}

// LoadDataset reads a JSONL file of {"messages": [...]} or {"text": "..."} lines (a .txt file is one plain
// text) and tokenizes it. Errors name file:line.
func LoadDataset(path string, tok tokenizer.Tokenizer) ([]Example, error) {
	if strings.HasSuffix(path, ".txt") {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		if len(strings.TrimSpace(string(raw))) == 0 {
			return nil, fmt.Errorf("%s: the dataset is empty", path)
		}
		return []Example{plainExample(tok, string(raw))}, nil
	}
	var out []Example
	err := readJSONL(path, func(raw []byte) error {
		var r record
		if err := json.Unmarshal(raw, &r); err != nil {
			return fmt.Errorf("not a JSON object: %v", err)
		}
		switch {
		case len(r.Messages) > 0:
			ex, err := ChatExample(tok, r.Messages)
			if err != nil {
				return err
			}
			out = append(out, ex)
		case r.Text != nil:
			out = append(out, plainExample(tok, *r.Text))
		default:
			return fmt.Errorf("needs \"messages\" (a list of {role, content}) or \"text\"")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: the dataset is empty", path)
	}
	for _, ex := range out {
		if slices.Contains(ex.Loss, true) {
			return out, nil
		}
	}
	return nil, fmt.Errorf("%s: no example has a token to learn (chats need an assistant turn; text lines need text): training on it would change nothing", path)
}

func plainExample(tok tokenizer.Tokenizer, text string) Example {
	ids := tok.Encode(text, true)
	loss := make([]bool, len(ids))
	for i := range loss {
		loss[i] = true
	}
	return Example{IDs: ids, Loss: loss}
}

// ChatExample renders a conversation with the tokenizer's chat template and marks the assistant's turns (their
// content and end-of-turn token, not the role header) for the loss. The template must render each conversation
// as an extension of its prefixes, as ChatML and the Llama and Qwen templates do.
func ChatExample(tok tokenizer.Tokenizer, msgs []tokenizer.TemplateMessage) (Example, error) {
	hf, ok := tok.(*tokenizer.HF)
	if !ok {
		return Example{}, fmt.Errorf("chat data needs a tokenizer with a chat template (tokenizer.json)")
	}
	render := func(n int, gen bool) (string, error) {
		return hf.ApplyChatTemplate(msgs[:n], tokenizer.ChatOptions{AddGenerationPrompt: gen})
	}
	var ex Example
	prev := ""
	add := func(text string, loss bool) {
		ids := hf.Encode(text, false)
		ex.IDs = append(ex.IDs, ids...)
		for range ids {
			ex.Loss = append(ex.Loss, loss)
		}
	}
	for k, m := range msgs {
		role, _ := m["role"].(string)
		if _, ok := m["content"]; !ok || role == "" {
			return Example{}, fmt.Errorf("message %d needs \"role\" and \"content\"", k)
		}
		full, err := render(k+1, false)
		if err != nil {
			return Example{}, err
		}
		if !strings.HasPrefix(full, prev) {
			return Example{}, fmt.Errorf("the chat template does not render message %d as an extension of the ones before it", k)
		}
		if role == "assistant" {
			header, err := render(k, true)
			if err != nil {
				return Example{}, err
			}
			if !strings.HasPrefix(header, prev) || !strings.HasPrefix(full, header) {
				return Example{}, fmt.Errorf("the chat template's generation prompt is not a prefix of message %d", k)
			}
			add(header[len(prev):], false)
			add(full[len(header):], true)
		} else {
			add(full[len(prev):], false)
		}
		prev = full
	}
	if bos := hf.BOS(); bos >= 0 && (len(ex.IDs) == 0 || ex.IDs[0] != bos) && !strings.Contains(prev, hf.Piece(bos)) {
		ex.IDs = append([]int{bos}, ex.IDs...)
		ex.Loss = append([]bool{false}, ex.Loss...)
	}
	return ex, nil
}

// packOpen is how many partly filled blocks Pack keeps open for first-fit placement.
const packOpen = 8

// Pack places examples into blocks of exactly seqLen+1 tokens (inputs and the shifted targets) without splitting
// any that fit in a block: each goes, whole, into the first of a few open blocks with room for it, so a
// multi-turn conversation is trained on with all of its earlier turns in view, as it is used. A block is closed
// when full or, padded with tokens the loss ignores, when more than packOpen are open; examples longer than a
// block are cut into block-sized pieces (overlapping by one token so every token is a target once). The
// placement is deterministic.
func Pack(examples []Example, seqLen int) []Example {
	size := seqLen + 1
	var blocks, open []Example
	closeBlock := func(b Example) {
		if len(b.IDs) < 2 {
			return
		}
		for len(b.IDs) < size {
			b.IDs = append(b.IDs, b.IDs[len(b.IDs)-1])
			b.Loss = append(b.Loss, false)
		}
		blocks = append(blocks, b)
	}
	place := func(ex Example) {
		for i := range open {
			if len(open[i].IDs)+len(ex.IDs) <= size {
				open[i].IDs = append(open[i].IDs, ex.IDs...)
				open[i].Loss = append(open[i].Loss, ex.Loss...)
				if len(open[i].IDs) == size {
					closeBlock(open[i])
					open = append(open[:i], open[i+1:]...)
				}
				return
			}
		}
		open = append(open, Example{IDs: slices.Clone(ex.IDs), Loss: slices.Clone(ex.Loss)})
		if len(open) > packOpen {
			closeBlock(open[0])
			open = open[1:]
		}
	}
	for _, ex := range examples {
		// A long example becomes blocks that overlap by one token (the next block's first token is context, not a
		// target), cut by index so that a huge example costs its own size, not its size squared.
		start := 0
		for ; len(ex.IDs)-start > size; start += size - 1 {
			loss := slices.Clone(ex.Loss[start : start+size])
			if start > 0 {
				loss[0] = false
			}
			blocks = append(blocks, Example{IDs: ex.IDs[start : start+size : start+size], Loss: loss})
		}
		if start > 0 {
			rest := Example{IDs: ex.IDs[start:], Loss: slices.Clone(ex.Loss[start:])}
			rest.Loss[0] = false
			ex = rest
		}
		place(ex)
	}
	for _, b := range open {
		closeBlock(b)
	}
	return blocks
}

// readJSONL calls each with every non-empty line of a JSONL file (lines up to 64 MiB); an error is named
// path:line.
func readJSONL(path string, each func(raw []byte) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	line := 0
	for sc.Scan() {
		line++
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		if err := each(raw); err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s:%d: %w", path, line+1, err)
	}
	return nil
}
