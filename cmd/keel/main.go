// Command keel is a terminal research workbench for language-model personas.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) error
	subs          []string // the subcommands run dispatches to, listed by `keel help`
	dev           bool     // a developer's tool (benchmarks, device checks), listed apart from the user's commands
}

func commands() []command {
	return []command{
		{"generate", "continue a prompt with a model", runGenerate, nil, false},
		{"tokenize", "tokenize text or render a chat template (tokenize --model DIR TEXT)", runTokenize, nil, false},
		{"tokenizer", "train a byte-level BPE tokenizer (tokenizer train --vocab N --corpus FILE --out DIR)", runTokenizer, []string{"train"}, false},
		{"tui", "the workbench (also `keel` alone): chat, live Assistant-Axis plot, capping, steering, jobs, replay", runTUI, nil, false},
		{"chat", "chat with a model: the workbench on a terminal, a plain line REPL otherwise (chat --model DIR [--axis FILE])", runChatOrTUI, nil, false},
		{"eval", "measure a model (eval persona | eval capping [--model DIR] [--json])", runEval, []string{"persona", "capping", "alol", "ppo"}, false},
		{"axis", "the Assistant Axis: extract, calibrate, import the paper's .pt files, info", runAxis, []string{"extract", "calibrate", "import", "info"}, false},
		{"drift", "the drift experiment: mean projection per turn per domain (drift --axis FILE [--cap FILE])", runDrift, nil, false},
		{"model", "create or describe a model folder, or check it fits the GPUs (model init | info --model DIR | fit --model DIR)", runModel, []string{"init", "info", "build", "fit"}, false},
		{"corpus", "the synthetic persona chat corpus (corpus generate --seed S --out FILE | corpus roles)", runCorpus, []string{"generate", "roles"}, false},
		{"sessions", "recorded chats: list, show, export, reproject, export-dataset, verify", runSessions, []string{"list", "show", "export", "reproject", "export-dataset", "verify"}, false},
		{"train", "fine-tune a model in the background or the foreground (train sft|alol|ppo|rm --model DIR ...)", runTrain, []string{"sft", "alol", "ppo", "rm"}, false},
		{"serve", "serve one model to many clients: an OpenAI-compatible API with per-request capping and steering (serve [--model DIR] [--http ADDR] [--api-keys FILE])", runServe, nil, false},
		{"jobs", "list, watch, pause, resume or cancel training runs", runJobs, []string{"list", "watch", "cancel", "pause", "resume"}, false},
		{"export", "export a model or an axis for llama.cpp (export gguf | control-vector)", runExport, []string{"gguf", "control-vector"}, false},
		{"convert", "convert a checkpoint into a Hugging Face folder (convert llama2c IN.bin TOK.bin OUT_DIR)", runConvert, []string{"llama2c"}, false},
		{"bench", "benchmarks, each against a reference in the same run", runBench, []string{"decode", "tokenize", "train", "gguf", "serve", "hostile"}, true},
		{"info", "show the libtorch runtime keel uses", runInfo, nil, false},
		{"devcheck", "keel's side of scripts/device-check.sh (forward, generate, decode)", runDevcheck, []string{"forward", "generate", "decode", "tiny", "pt", "sft"}, true},
		{"version", "print keel's version", runVersion, nil, false},
	}
}

// usageError marks errors caused by bad flags or arguments (exit status 2).
type usageError struct{ error }

// helpError is a -h: the command's usage, which run prints on stdout (exit status 0).
type helpError struct{ usage string }

func (h helpError) Error() string { return flag.ErrHelp.Error() }
func (h helpError) Unwrap() error { return flag.ErrHelp }

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: keel <command> [flags]")
	for _, dev := range []bool{false, true} {
		if dev {
			fmt.Fprintln(w, "\ndeveloper tools (measurements against references, device checks):")
		} else {
			fmt.Fprintln(w, "\ncommands:")
		}
		for _, c := range commands() {
			if c.dev != dev {
				continue
			}
			fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
			if len(c.subs) > 0 {
				fmt.Fprintf(w, "  %-10s   keel %s %s\n", "", c.name, strings.Join(c.subs, "|"))
			}
		}
	}
	fmt.Fprintln(w, "\nRun `keel <command> -h` for a command's flags.")
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
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		usage(stdout)
		return 0
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		args = append([]string{"tui"}, args...) // `keel [flags]` opens the workbench
	}
	for _, c := range commands() {
		if c.name == args[0] {
			if len(c.subs) > 0 && (len(args) < 2 || !slices.Contains(c.subs, args[1])) {
				list := fmt.Sprintf("keel %s %s (keel %s SUB -h for its flags)", c.name, strings.Join(c.subs, "|"), c.name)
				switch {
				case len(args) >= 2 && (args[1] == "-h" || args[1] == "--help"):
					fmt.Fprintf(stdout, "%s: %s\n%s\n", c.name, c.summary, list)
					return 0
				case len(args) < 2:
					fmt.Fprintf(stderr, "keel %s: a subcommand is needed: %s\n", c.name, list)
				default:
					fmt.Fprintf(stderr, "keel %s: unknown subcommand %q: %s\n", c.name, args[1], list)
				}
				return 2
			}
			err := c.run(args[1:], stdout, stderr)
			if err == nil {
				return 0
			}
			if errors.Is(err, flag.ErrHelp) {
				var h helpError
				if errors.As(err, &h) {
					fmt.Fprint(stdout, h.usage)
				}
				return 0
			}
			fmt.Fprintln(stderr, "keel "+c.name+": "+oneLine(err.Error()))
			var ue usageError
			if errors.As(err, &ue) {
				return 2
			}
			return 1
		}
	}
	fmt.Fprintf(stderr, "keel: unknown command %q: run `keel help` for the list\n", args[0])
	return 2
}

// runChatOrTUI is `keel chat`: the workbench when stdin is a terminal, the line REPL when it is a pipe or file.
func runChatOrTUI(args []string, stdout, stderr io.Writer) error {
	if stdinIsTerminal() {
		return runTUI(args, stdout, stderr)
	}
	return runChat(args, stdout, stderr)
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " ") }

// newFlags makes a flag set whose parse errors come back as usageErrors (printed once, by run).
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("keel "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse reads flags anywhere among the arguments (`keel jobs watch ID --runs DIR` as well as before ID); the
// positional arguments stay in fs.Args().
func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	var positional []string
	for {
		if err := parseOnce(fs, args); err != nil {
			return err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if rest[0] == "--" {
			positional = append(positional, rest[1:]...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	return fs.Parse(append([]string{"--"}, positional...))
}

func parseOnce(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			var b strings.Builder
			n := 0
			fs.VisitAll(func(*flag.Flag) { n++ })
			if n == 0 {
				fmt.Fprintf(&b, "usage: %s (it takes no flags)\n", fs.Name())
			} else {
				fmt.Fprintf(&b, "usage: %s [flags]\n", fs.Name())
				fs.SetOutput(&b)
				fs.PrintDefaults()
			}
			return helpError{b.String()}
		}
		return usageError{err}
	}
	return nil
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q: keel version takes none", fs.Arg(0))}
	}
	fmt.Fprintln(stdout, "keel", version)
	return nil
}
