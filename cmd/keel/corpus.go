package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
)

// runCorpusRoles: keel corpus roles: the styles the corpus draws from.
func runCorpusRoles(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	p, err := probes.LoadPersonas()
	if err != nil {
		return err
	}
	for _, r := range append([]probes.Style{p.Assistant}, p.Roles...) {
		fmt.Fprintf(stdout, "%-14s %-10s %s\n", r.Name, r.Kind, strings.Join(r.Lexicon, " "))
	}
	return nil
}

// runCorpusGenerate: keel corpus generate --seed S --out FILE [counts]
func runCorpusGenerate(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	p, err := probes.LoadPersonas()
	if err != nil {
		return err
	}
	cfg := probes.DefaultCorpus()
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "random seed (the same seed gives the same file)")
	out := fs.String("out", "", "output JSONL file (chat records with ChatML roles)")
	textOut := fs.String("text", "", "also write every message's text, one per line (a tokenizer's training text)")
	roles := fs.String("roles", "", "comma-separated roles to draw role-played chats from (default: all; keel corpus roles lists them)")
	fs.IntVar(&cfg.AssistantQA, "assistant-qa", cfg.AssistantQA, "single-turn Assistant answers")
	fs.IntVar(&cfg.RoleQA, "role-qa", cfg.RoleQA, "single-turn role-prompted answers")
	fs.IntVar(&cfg.Conversations, "conversations", cfg.Conversations, "multi-turn conversations per domain (coding, writing, therapy, philosophy)")
	fs.IntVar(&cfg.MaxTurns, "turns", cfg.MaxTurns, "turns per conversation (1-10)")
	fs.IntVar(&cfg.Vaults, "vaults", cfg.Vaults, "vault-code requests (half role-prompted and complied, half refused)")
	fs.IntVar(&cfg.Recalls, "recalls", cfg.Recalls, "recall drills: a number, name or phrase in the chat asked back (half in role)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return cli.Usagef("give --out FILE")
	}
	if *roles != "" {
		for _, r := range strings.Split(*roles, ",") {
			cfg.Roles = append(cfg.Roles, strings.TrimSpace(r))
		}
	}
	if err := cfg.Check(p); err != nil {
		return cli.UsageError{Err: err}
	}
	var st probes.CorpusStats
	err = atomicfile.Write(*out, func(f *os.File) error {
		var err error
		st, err = probes.GenerateCorpus(cfg, p, f)
		return err
	})
	if err != nil {
		return err
	}
	if *textOut != "" {
		if err := writeCorpusText(*out, *textOut); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "%s: %d chats (%d Assistant, %d role-played, %d conversations with %d of %d turns drifted, %d vault requests, %d recall drills)\n",
		*out, st.Chats, st.AssistantQA, st.RoleQA, st.Conversations, st.DriftedTurns, st.DriftedTurns+st.AssistantTurns, st.Vaults, st.Recalls)
	return nil
}

// writeCorpusText writes each message's content of a corpus file on a line of its own.
func writeCorpusText(corpus, out string) error {
	f, err := os.Open(corpus)
	if err != nil {
		return err
	}
	defer f.Close()
	return atomicfile.Write(out, func(w *os.File) error {
		bw := bufio.NewWriter(w)
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			var rec struct{ Messages []tokenizer.Message }
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				return fmt.Errorf("%s: %v", corpus, err)
			}
			for _, m := range rec.Messages {
				bw.WriteString(m.Content)
				bw.WriteByte('\n')
			}
		}
		if err := sc.Err(); err != nil {
			return err
		}
		return bw.Flush()
	})
}
