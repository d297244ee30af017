package model

import (
	"context"
	"fmt"
	"strings"

	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/engine/torch"
)

// LM is a model folder loaded whole: weights, tokenizer and generation defaults.
type LM struct {
	*Model
	Dir       string
	Tokenizer tokenizer.Tokenizer
	GenConfig *GenerationConfig
}

// Load reads a Hugging Face model folder (config.json, *.safetensors, tokenizer, generation_config.json).
func Load(rt *torch.Runtime, dir string, opts Options) (*LM, error) {
	cfg, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if err := checkOptions(rt, cfg, opts); err != nil {
		return nil, err
	}
	if err := checkFits(rt, cfg, opts); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	gen, err := ReadGenerationConfig(dir)
	if err != nil {
		return nil, err
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > cfg.VocabSize {
		return nil, fmt.Errorf("%s: the tokenizer has %d tokens but config.json's vocab_size is %d", dir, tok.VocabSize(), cfg.VocabSize)
	}
	m, err := loadWeights(rt, dir, cfg, opts)
	if err != nil {
		return nil, err
	}
	return &LM{Model: m, Dir: dir, Tokenizer: tok, GenConfig: gen}, nil
}

// EOS is the end-of-sequence ids: generation_config.json's, else config.json's.
func (lm *LM) EOS() []int {
	if len(lm.GenConfig.EOSTokenID) > 0 {
		return lm.GenConfig.EOSTokenID
	}
	return lm.Config.EOSTokenID
}

// TextConfig is a text-level generation request.
type TextConfig struct {
	GenerateConfig
	Stop []string // stop strings (generation_config.json's are added)
	// OnText receives each token's decoded text (complete UTF-8 only) with its step.
	OnText func(text string, st Step) error
}

// TextResult is one row's output.
type TextResult struct {
	Result
	Text string
}

// GenerateText continues each prompt's token ids, decoding as it goes and honouring stop strings.
func (lm *LM) GenerateText(ctx context.Context, prompts [][]int, tc TextConfig) ([]TextResult, error) {
	g := tc.GenerateConfig
	if g.EOS == nil {
		g.EOS = lm.EOS()
	}
	stops := append(append([]string(nil), tc.Stop...), lm.GenConfig.StopStrings...)
	streams := make([]*tokenizer.Stream, len(prompts))
	texts := make([]strings.Builder, len(prompts))
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("prompt %d is empty: start it with the BOS token", i)
		}
		streams[i] = tokenizer.NewStreamAfter(lm.Tokenizer, p[len(p)-1])
	}
	isEOS := map[int]bool{}
	for _, e := range g.EOS {
		isEOS[e] = true
	}
	g.OnStep = func(st Step) (bool, error) {
		// The end-of-sequence token ends the text; its own text ("<|im_end|>", "</s>") is not part of it.
		piece := ""
		if !isEOS[st.ID] {
			piece = streams[st.Row].Next(st.ID)
		}
		texts[st.Row].WriteString(piece)
		if tc.OnText != nil {
			if err := tc.OnText(piece, st); err != nil {
				return false, err
			}
		}
		for _, stop := range stops {
			if stop != "" && strings.Contains(texts[st.Row].String(), stop) {
				return true, nil
			}
		}
		return false, nil
	}
	res, err := lm.Generate(ctx, prompts, g)
	out := make([]TextResult, len(res))
	for i, r := range res {
		out[i] = TextResult{Result: r, Text: texts[i].String() + streams[i].Flush()}
	}
	return out, err
}
