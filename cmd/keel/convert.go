package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/keel-lab/keel/engine/convert"
	"github.com/keel-lab/keel/internal/cli"
)

// runConvertLlama2c: keel convert llama2c MODEL.bin TOKENIZER.bin OUT_DIR
func runConvertLlama2c(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 3 {
		return cli.Usagef("usage: keel convert llama2c MODEL.bin TOKENIZER.bin OUT_DIR (got %d arguments)", fs.NArg())
	}
	if err := convert.Llama2c(fs.Arg(0), fs.Arg(1), fs.Arg(2)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n", fs.Arg(2))
	return nil
}
