package main

import (
	"fmt"
	"io"

	"github.com/keel-lab/keel/engine/convert"
)

func runConvert(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "llama2c" {
		return usageError{fmt.Errorf("usage: keel convert llama2c MODEL.bin TOKENIZER.bin OUT_DIR")}
	}
	fs := newFlags("convert llama2c MODEL.bin TOKENIZER.bin OUT_DIR", stderr)
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	args = append(args[:1], fs.Args()...)
	if len(args) != 4 {
		return usageError{fmt.Errorf("usage: keel convert llama2c MODEL.bin TOKENIZER.bin OUT_DIR (got %d arguments)", len(args)-1)}
	}
	if err := convert.Llama2c(args[1], args[2], args[3]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n", args[3])
	return nil
}
