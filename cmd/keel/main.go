// Command keel is a terminal research workbench for language-model personas.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/keel-lab/keel/bench"
	"github.com/keel-lab/keel/internal/cli"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// commands is keel's command table: dispatch, `keel help` and every -h are made from it.
func commands() []cli.Command {
	return append([]cli.Command{
		{Name: "tui", Summary: "the workbench (also `keel` alone): chat, live Assistant-Axis plot, capping, steering, jobs, replay", Run: runTUI},
		{Name: "chat", Summary: "chat with a model: the workbench on a terminal, a plain line REPL otherwise", Run: runChatOrTUI},
		{Name: "generate", Summary: "continue a prompt with a model (--prompt TEXT: a user's message by default, --chat=false: raw text)", Run: runGenerate},
		{Name: "tokenize", Args: "[TEXT]", Summary: "tokenize text or render a chat template", Run: runTokenize},
		{Name: "tokenizer", Summary: "train a byte-level BPE tokenizer", Subs: []cli.Command{
			{Name: "train", Summary: "train a byte-level BPE tokenizer on a text file (--vocab N --corpus FILE --out DIR)", Run: runTokenizerTrain},
		}},
		{Name: "eval", Summary: "measure a model: each protocol prints its figures (--json: one JSON object)", Subs: []cli.Command{
			{Name: "persona", Summary: "role fidelity, jailbreaks and drift of a persona model", Run: runEvalPersona},
			{Name: "capping", Summary: "extraction and calibration, then the capping sweep and the steering checks", Run: runEvalCapping},
			{Name: "alol", Summary: "every A-LoL variant over seeds on the model's own rollouts: held-out reward, drift, role fidelity, capability", Run: runEvalALoL},
			{Name: "ppo", Summary: "PPO on the model's own conversations (reward, KL, drift, capability), then an unstable run the monitor must stop", Run: runEvalPPO},
		}},
		{Name: "axis", Summary: "the Assistant Axis: extract, calibrate, import the paper's .pt files, info", Subs: []cli.Command{
			{Name: "extract", Summary: "extract the axis from role-played and default answers (--out DIR)", Run: runAxisExtract},
			{Name: "calibrate", Summary: "calibrate the cap rules of an axis folder (--dir DIR)", Run: runAxisCalibrate},
			{Name: "import", Args: "FILE.pt...", Summary: "import the paper's released .pt axis and capping files into an axis folder (--out DIR)", Run: runAxisImport},
			{Name: "info", Args: "FILE|DIR", Summary: "describe an axis file or folder", Run: runAxisInfo},
		}},
		{Name: "drift", Summary: "the drift experiment: mean projection per turn per domain, with and without a cap", Run: runDrift},
		{Name: "model", Summary: "create, build or describe a model folder, or check it fits the GPUs", Subs: []cli.Command{
			{Name: "init", Summary: "a random-weight Llama sized by a trained tokenizer (--tokenizer DIR --out DIR)", Run: runModelInit},
			{Name: "info", Summary: "describe a model folder (default: the embedded persona model)", Run: runModelInfo},
			{Name: "build", Summary: "rebuild the persona model from its recipe (--out DIR)", Run: runModelBuild},
			{Name: "fit", Summary: "what the model needs on each device, from config.json alone", Run: runModelFit},
			{Name: "list", Summary: "the models --model names without a path: the embedded one and the Hugging Face cache's", Run: runModelList},
		}},
		{Name: "pull", Args: "ORG/NAME[@REVISION]...", Summary: "fetch a model's config, tokenizer and safetensors from the Hugging Face hub into its cache (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE honoured)", Run: runPull},
		{Name: "corpus", Summary: "the synthetic persona chat corpus", Subs: []cli.Command{
			{Name: "generate", Summary: "write the corpus (--seed S --out FILE)", Run: runCorpusGenerate},
			{Name: "roles", Summary: "list the roles and their lexicons", Run: runCorpusRoles},
		}},
		{Name: "sessions", Summary: "recorded chats: list, show, export, reproject, export-dataset, verify", Subs: []cli.Command{
			{Name: "list", Summary: "the recorded sessions, newest first", Run: withSub("list", runSessions)},
			{Name: "show", Args: "FILE", Summary: "a session's turns and figures", Run: withSub("show", runSessions)},
			{Name: "export", Args: "FILE", Summary: "a session as a cast, transcript, CSV or PNG (--format F --out PATH)", Run: withSub("export", runSessions)},
			{Name: "reproject", Args: "FILE", Summary: "a session's tokens projected onto another axis (--axis FILE)", Run: withSub("reproject", runSessions)},
			{Name: "export-dataset", Args: "FILE...", Summary: "sessions as a training dataset (--out PATH)", Run: withSub("export-dataset", runSessions)},
			{Name: "verify", Args: "FILE", Summary: "run a recording's turns again and compare every recorded number", Run: withSub("verify", runSessions)},
		}},
		{Name: "train", Summary: "fine-tune a model in the background or the foreground", Subs: []cli.Command{
			{Name: "sft", Summary: "supervised fine-tuning on chat records (--model DIR --data FILE.jsonl)", Run: runTrainSFT},
			{Name: "alol", Summary: "A-LoL: offline policy gradient on rewarded rollouts (--model DIR --data FILE.jsonl)", Run: runTrainALoL},
			{Name: "ppo", Summary: "PPO on the model's own replies to prompts (--model DIR --prompts FILE.jsonl)", Run: runTrainPPO},
			{Name: "rm", Summary: "a reward model from preference pairs (--model DIR --data FILE.jsonl)", Run: runTrainRM},
		}},
		{Name: "serve", Summary: "serve one model to many clients: an OpenAI-compatible API with per-request capping and steering, and the workbench over SSH", Run: runServe},
		{Name: "jobs", Summary: "list, watch, pause, resume or cancel training runs", Subs: []cli.Command{
			{Name: "list", Summary: "every run with its state, loss and step", Run: withSub("list", runJobs)},
			{Name: "watch", Args: "RUN", Summary: "follow a run's progress until it ends", Run: withSub("watch", runJobs)},
			{Name: "cancel", Args: "RUN", Summary: "stop a run (it saves a checkpoint first)", Run: withSub("cancel", runJobs)},
			{Name: "pause", Args: "RUN", Summary: "pause a run before its next step", Run: withSub("pause", runJobs)},
			{Name: "resume", Args: "RUN", Summary: "resume a paused run", Run: withSub("resume", runJobs)},
		}},
		{Name: "export", Summary: "export a model or an axis for llama.cpp", Subs: []cli.Command{
			{Name: "gguf", Summary: "a model as a GGUF file (--model DIR --out FILE)", Run: withSub("gguf", runExport)},
			{Name: "control-vector", Summary: "an axis as a llama.cpp control vector (--axis FILE --out FILE)", Run: withSub("control-vector", runExport)},
		}},
		{Name: "convert", Summary: "convert a checkpoint into a Hugging Face folder", Subs: []cli.Command{
			{Name: "llama2c", Args: "MODEL.bin TOKENIZER.bin OUT_DIR", Summary: "a llama2.c checkpoint and tokenizer", Run: runConvertLlama2c},
		}},
		{Name: "info", Summary: "show the libtorch runtime keel uses", Run: runInfo},
		{Name: "version", Summary: "print keel's version", Run: runVersion},
	}, bench.Commands()...)
}

// withSub binds a body that several subcommands share (they take one set of flags) to one of them.
func withSub(sub string, body func(sub string, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error) cli.Run {
	return func(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
		return body(sub, fs, args, stdout, stderr)
	}
}

func main() {
	boundMallocArenas()
	stop := startProfile(os.Stderr)
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// boundMallocArenas re-executes keel once with MALLOC_ARENA_MAX=1 when the environment does not set it. glibc
// gives every OS thread that allocates a malloc arena of its own (up to 8 per core), and Go runs libtorch's calls
// on whichever thread holds the goroutine, so freed tensors' pages were kept in many arenas: `keel bench train`'s
// step peaked at 500 MB resident, 530 MB with two arenas and 400 MB with one (the C++ reference, one thread:
// 374 MB), at the same speed. glibc fixes the limit as its arenas are made, before the shim is loaded: setting it
// then (mallopt) caps only the arenas made after. The process keeps its PID; where the re-execution cannot
// happen, keel runs on as it is.
func boundMallocArenas() {
	if _, set := os.LookupEnv("MALLOC_ARENA_MAX"); set || runtime.GOOS != "linux" {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	syscall.Exec(exe, os.Args, append(os.Environ(), "MALLOC_ARENA_MAX=1")) // returns only on failure
}

// startProfile writes a Go CPU profile of the whole command to $KEEL_CPUPROFILE when it is set (read it with
// `go tool pprof`); the returned function ends it. Profiling a real command is how the decode path's
// per-token costs are found.
func startProfile(stderr io.Writer) func() {
	path := os.Getenv("KEEL_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(stderr, "keel: KEEL_CPUPROFILE: %v (unset it or name a writable file)\n", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(stderr, "keel: KEEL_CPUPROFILE: %v\n", err)
		f.Close()
		return func() {}
	}
	stop := func() {
		pprof.StopCPUProfile()
		f.Close()
	}
	// A long command profiled is often interrupted: the profile is still written.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		stop()
		os.Exit(130)
	}()
	return stop
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
		args = append([]string{"tui"}, args...) // `keel [flags]` opens the workbench
	}
	return cli.Main("keel", commands(), args, stdout, stderr)
}

// runChatOrTUI is `keel chat`: the workbench when stdin is a terminal, the line REPL when it is a pipe or file.
func runChatOrTUI(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if stdinIsTerminal() {
		return runTUI(fs, args, stdout, stderr)
	}
	return runChat(fs, args, stdout, stderr)
}

func runVersion(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected argument %q: keel version takes none", fs.Arg(0))
	}
	fmt.Fprintln(stdout, "keel", version)
	return nil
}
