package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/internal/cli"
)

// maxStdinText bounds what keel tokenize reads from a pipe.
const maxStdinText = 64 << 20

// runTokenize: keel tokenize --model DIR [--json] [--chat FILE.json [--generation-prompt]] [--no-special] [TEXT]
// Without TEXT (or with -) the text is standard input, byte for byte.
func runTokenize(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	dir := fs.String("model", "", "the model: a folder (tokenizer files are enough), a Hugging Face id ORG/NAME[@REVISION] or persona")
	asJSON := fs.Bool("json", false, `print {"ids", "pieces", "decoded"}`)
	chat := fs.String("chat", "", "a JSON file holding a messages list: print the rendered chat template")
	genPrompt := fs.Bool("generation-prompt", true, "with --chat: end with the assistant's turn header")
	noSpecial := fs.Bool("no-special", false, "do not add the post-processor's special tokens")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return cli.Usagef("--model is required: a folder, a Hugging Face id or persona")
	}
	folder, err := cli.ResolveModel(*dir, stderr)
	if err != nil {
		return err
	}
	tok, err := tokenizer.Load(folder)
	if err != nil {
		return err
	}
	if *chat != "" {
		hf, ok := tok.(*tokenizer.HF)
		if !ok {
			return fmt.Errorf("%s: this tokenizer has no chat template (only tokenizer.json tokenizers carry one)", *dir)
		}
		raw, err := os.ReadFile(*chat)
		if err != nil {
			return err
		}
		var msgs []tokenizer.TemplateMessage
		if err := json.Unmarshal(raw, &msgs); err != nil {
			return fmt.Errorf("%s: want a JSON list of messages ({\"role\", \"content\"}): %v", *chat, err)
		}
		text, err := hf.ApplyChatTemplate(msgs, tokenizer.ChatOptions{AddGenerationPrompt: *genPrompt})
		if err != nil {
			return fmt.Errorf("%s: %w", *dir, err)
		}
		_, err = io.WriteString(stdout, text)
		return err
	}
	text := strings.Join(fs.Args(), " ")
	if fs.NArg() == 0 || text == "-" {
		if fs.NArg() == 0 && stdinIsTerminal() {
			return cli.Usagef("give the text to tokenize as an argument, or pipe it in")
		}
		raw, err := io.ReadAll(io.LimitReader(os.Stdin, maxStdinText+1))
		if err != nil {
			return fmt.Errorf("reading standard input: %w", err)
		}
		if len(raw) > maxStdinText {
			return fmt.Errorf("standard input holds more than %d MiB: tokenize a smaller piece", maxStdinText>>20)
		}
		text = string(raw)
	}
	ids := tok.Encode(text, !*noSpecial)
	pieces := make([]string, len(ids))
	for i, id := range ids {
		pieces[i] = tok.Piece(id)
	}
	decoded := tokenizer.Decode(tok, ids)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false) // token pieces such as <|im_start|> print as themselves
		return enc.Encode(map[string]any{"ids": ids, "pieces": pieces, "decoded": decoded})
	}
	for i, id := range ids {
		fmt.Fprintf(stdout, "%d\t%q\n", id, pieces[i])
	}
	return nil
}

// runTokenizerTrain: keel tokenizer train --vocab N --corpus FILE --out DIR
func runTokenizerTrain(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	vocab := fs.Int("vocab", 4096, "vocabulary size, special tokens included")
	corpus := fs.String("corpus", "", "training text")
	out := fs.String("out", "", "output folder (tokenizer.json, tokenizer_config.json)")
	digits := fs.Bool("single-digits", false, "split numbers into single digits (Qwen's split) instead of runs of up to three")
	minFreq := fs.Int("min-frequency", 2, "merge only pairs seen at least this often")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *corpus == "" || *out == "" {
		return cli.Usagef("--corpus FILE and --out DIR are required")
	}
	if err := tokenizer.TrainFile(*corpus, *out, tokenizer.TrainConfig{VocabSize: *vocab, MinFrequency: *minFreq, SingleDigits: *digits}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s/tokenizer.json and tokenizer_config.json\n", *out)
	return nil
}
