package main

import (
	"fmt"
	"io"
)

func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{fmt.Errorf("usage: keel bench decode|tokenize|train|gguf|serve|hostile [flags]")}
	}
	switch args[0] {
	case "decode":
		return runBenchDecode(args[1:], stdout, stderr)
	case "tokenize":
		return runBenchTokenize(args[1:], stdout, stderr)
	case "train":
		return runBenchTrain(args[1:], stdout, stderr)
	case "gguf":
		return runBenchGGUF(args[1:], stdout, stderr)
	case "serve":
		return runBenchServe(args[1:], stdout, stderr)
	case "hostile":
		return runBenchHostile(args[1:], stdout, stderr)
	}
	return usageError{fmt.Errorf("unknown benchmark %q: keel bench decode|tokenize|train|gguf|serve|hostile", args[0])}
}
