// Package cli is keel's command table: each command and subcommand is declared once, as a row of name, usage,
// summary and run, and dispatch, `keel help` and every -h are made from the rows. cmd/keel and the benchmark
// harness (package bench) declare their rows with it; the flag parsing they share lives here too.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Run is a command's body. The dispatcher makes fs (named "keel axis extract"); Run declares its flags on it and
// parses args with Parse, so -h prints the row's usage and those flags before anything else happens.
type Run func(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error

// Command is one row of the table.
type Command struct {
	Name    string    // the word typed: "extract"
	Args    string    // what the usage line shows after "[flags]": "FILE.pt... --out DIR"; empty when none
	Summary string    // one line: what it does
	Run     Run       // nil when Subs is set
	Subs    []Command // its subcommands, each a row of its own
	Dev     bool      // a developer's tool (benchmarks, device checks), listed apart from the user's commands
}

// SubNames are the names of c's subcommands in their order.
func (c Command) SubNames() []string {
	names := make([]string, len(c.Subs))
	for i, s := range c.Subs {
		names[i] = s.Name
	}
	return names
}

// UsageError marks an error caused by bad flags or arguments: exit status 2.
type UsageError struct{ Err error }

func (u UsageError) Error() string { return u.Err.Error() }
func (u UsageError) Unwrap() error { return u.Err }

// Usagef is a UsageError with a formatted message.
func Usagef(format string, args ...any) error { return UsageError{fmt.Errorf(format, args...)} }

// Find is the row of table named name, or false.
func Find(table []Command, name string) (Command, bool) {
	for _, c := range table {
		if c.Name == name {
			return c, true
		}
	}
	return Command{}, false
}

// Help writes the table: every command with its summary and, under it, its subcommands; developer tools last.
func Help(w io.Writer, prog string, table []Command) {
	fmt.Fprintf(w, "usage: %s <command> [flags]\n", prog)
	for _, dev := range []bool{false, true} {
		if dev {
			fmt.Fprintln(w, "\ndeveloper tools (measurements against references, device checks):")
		} else {
			fmt.Fprintln(w, "\ncommands:")
		}
		for _, c := range table {
			if c.Dev != dev {
				continue
			}
			fmt.Fprintf(w, "  %-10s %s\n", c.Name, c.Summary)
			if len(c.Subs) > 0 {
				fmt.Fprintf(w, "  %-10s   %s %s %s\n", "", prog, c.Name, strings.Join(c.SubNames(), "|"))
			}
		}
	}
	fmt.Fprintf(w, "\nRun `%s <command> -h` for a command's flags.\n", prog)
}

// Main runs the row args name (and, for a row with subcommands, the sub args[1] names) and returns the exit
// status: 0 on success or -h, 2 on a usage error, 1 otherwise. Errors are printed as one line on stderr.
func Main(prog string, table []Command, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		Help(stdout, prog, table)
		return 0
	}
	c, ok := Find(table, args[0])
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown command %q: run `%s help` for the list\n", prog, args[0], prog)
		return 2
	}
	return dispatch(prog+" "+c.Name, c, args[1:], stdout, stderr)
}

func dispatch(path string, c Command, args []string, stdout, stderr io.Writer) int {
	if len(c.Subs) > 0 {
		list := fmt.Sprintf("%s %s (%s SUB -h for its flags)", path, strings.Join(c.SubNames(), "|"), path)
		switch {
		case len(args) > 0 && (args[0] == "-h" || args[0] == "--help"):
			fmt.Fprintf(stdout, "%s: %s\n", path, c.Summary)
			width := 0
			for _, s := range c.Subs {
				width = max(width, len(strings.TrimSpace(s.Name+" "+s.Args)))
			}
			for _, s := range c.Subs {
				fmt.Fprintf(stdout, "  %-*s  %s\n", width, strings.TrimSpace(s.Name+" "+s.Args), s.Summary)
			}
			fmt.Fprintf(stdout, "Run `%s SUB -h` for a subcommand's flags.\n", path)
			return 0
		case len(args) == 0:
			fmt.Fprintf(stderr, "%s: a subcommand is needed: %s\n", path, list)
			return 2
		}
		sub, ok := Find(c.Subs, args[0])
		if !ok {
			fmt.Fprintf(stderr, "%s: unknown subcommand %q: %s\n", path, args[0], list)
			return 2
		}
		return dispatch(path+" "+sub.Name, sub, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(stderr) // where a command reports what it does while loading (the flags' own errors come back as values)
	err := c.Run(fs, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		writeUsage(stdout, path, c, fs)
		return 0
	}
	fmt.Fprintln(stderr, path+": "+OneLine(err.Error()))
	var ue UsageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// writeUsage is a row's -h: its usage line, its summary and its flags.
func writeUsage(w io.Writer, path string, c Command, fs *flag.FlagSet) {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	line := path
	if n > 0 {
		line += " [flags]"
	}
	if c.Args != "" {
		line += " " + c.Args
	}
	fmt.Fprintf(w, "usage: %s\n%s\n", line, c.Summary)
	if n == 0 {
		fmt.Fprintln(w, "(it takes no flags)")
		return
	}
	fmt.Fprintln(w, "\nflags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// Parse reads flags anywhere among the arguments (`keel jobs watch ID --runs DIR` as well as before ID); the
// positional arguments stay in fs.Args(). A bad flag is a UsageError; -h is flag.ErrHelp.
func Parse(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	fs.SetOutput(io.Discard)
	defer fs.SetOutput(out)
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
			return flag.ErrHelp
		}
		return UsageError{Err: err}
	}
	return nil
}

// NoArgs is a UsageError when fs kept positional arguments the command does not take.
func NoArgs(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q: %s takes none", fs.Arg(0), fs.Name())
	}
	return nil
}

// OneLine folds a message onto one line.
func OneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " ") }

// SplitList reads a comma-separated flag value: items trimmed, empty ones dropped.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// ParseLayers reads --layers: comma-separated layers, each a number or a window A:B (a Python slice), "2:6" or
// "3,5,8".
func ParseLayers(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if a, b, ok := strings.Cut(f, ":"); ok {
			lo, errA := strconv.Atoi(a)
			hi, errB := strconv.Atoi(b)
			if errA != nil || errB != nil || lo < 0 || hi <= lo || hi-lo > 1024 {
				return nil, fmt.Errorf("--layers %q: %q is not a window A:B with 0 <= A < B", s, f)
			}
			for l := lo; l < hi; l++ {
				out = append(out, l)
			}
			continue
		}
		l, err := strconv.Atoi(f)
		if err != nil || l < 0 {
			return nil, fmt.Errorf("--layers %q: give layers as 2:6 or 3,5,8", s)
		}
		out = append(out, l)
	}
	return out, nil
}
