// Package bench is keel's measuring harness: `keel bench` (each figure keel's against a reference run on the
// same input in the same process or machine) and `keel devcheck` (keel's side of scripts/device-check.sh). It is
// kept apart from cmd/keel, which only declares its rows; README.md says what each measures and against what.
package bench

import "github.com/keel-lab/keel/internal/cli"

// Commands are the harness's rows of keel's command table.
func Commands() []cli.Command {
	return []cli.Command{
		{Name: "bench", Summary: "benchmarks, each against a reference in the same run", Dev: true, Subs: []cli.Command{
			{Name: "decode", Summary: "decode tokens/s of random Llama shapes against the same ops in C++ on libtorch (--llama2c: against llama2.c's C loop)", Run: runBenchDecode},
			{Name: "tokenize", Summary: "encoding throughput against transformers.js on the same corpus", Run: runBenchTokenize},
			{Name: "train", Summary: "an SFT step's time and memory against the same step in C++ on libtorch", Run: runBenchTrain},
			{Name: "gguf", Summary: "greedy decoding against llama.cpp (node-llama-cpp) on the same model exported to GGUF", Run: runBenchGGUF},
			{Name: "serve", Summary: "keel serve under 1, 8 and 32 streaming clients: tokens/s and time to first token against one client's", Run: runBenchServe},
			{Name: "hostile", Summary: "API time to first token beside one hostile SSH user at every quota, against without; memory; recordings after kill -9", Run: runBenchHostile},
		}},
		{Name: "devcheck", Summary: "keel's side of scripts/device-check.sh: raw results for the script to compare with transformers", Dev: true, Subs: []cli.Command{
			{Name: "forward", Summary: "a checkpoint's logits and every layer's output on given token ids", Run: devForward},
			{Name: "generate", Summary: "greedy generation with caps and steering on given prompt ids", Run: devGenerate},
			{Name: "decode", Summary: "decode tokens/s and peak device memory, hooks off and on, on a benchmark shape", Run: devDecode},
			{Name: "tiny", Summary: "keel's random-weight tiny checkpoint of every architecture (the script's dry run without transformers)", Run: devTiny},
			{Name: "pt", Summary: "every tensor of a torch.save file as JSON", Run: devPT},
			{Name: "sft", Summary: "a small SFT run (optionally under bf16 autocast): held-out loss before and after", Run: devSFT},
		}},
	}
}
