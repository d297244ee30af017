package workbench_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/keel-lab/keel/workbench"
	"github.com/keel-lab/keel/workbench/workbenchtest"
)

// confinedWorld is a remote user's session in a temporary machine: their folder, a folder beside it that nothing
// may reach, a runs folder, and a stand-in keel binary that records every command line it is given.
type confinedWorld struct {
	space, outside, runs, argvLog string
	session                       *workbench.Session
	close                         func()
}

func newConfinedWorld(t testing.TB) *confinedWorld {
	root := t.TempDir()
	w := &confinedWorld{space: filepath.Join(root, "users", "alice"), outside: filepath.Join(root, "outside"),
		runs: filepath.Join(root, "runs", "alice"), argvLog: filepath.Join(root, "argv.log")}
	os.MkdirAll(w.outside, 0o700)
	os.WriteFile(filepath.Join(w.outside, "secret"), []byte("root:x:0:0\n"), 0o600)
	space, err := workbench.OpenUserSpace(w.space)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(w.space, "d.jsonl"), []byte(`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}`+"\n"), 0o600)
	os.Symlink(w.outside, filepath.Join(w.space, "link"))
	os.Symlink(filepath.Join(w.outside, "secret"), filepath.Join(w.space, "secretlink"))
	syscall.Mkfifo(filepath.Join(w.space, "fifo"), 0o600)
	exe := filepath.Join(root, "keel")
	os.WriteFile(exe, []byte("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done >> "+w.argvLog+"\nprintf '\\n' >> "+w.argvLog+"\n"), 0o755)
	jobs := &workbench.ProcessJobs{Exe: exe, Model: "/models/m", RunsDir: w.runs, Owner: "alice",
		Confine: &workbench.Confinement{Space: space, MaxRead: 1 << 20, Programs: []string{"/opt/judge"}, Threads: 2, MaxMemory: 1 << 30, MaxRunning: 1000}}
	w.session = workbench.New(&workbenchtest.Backend{Axis: "axis"}, workbench.Options{Sampling: workbench.DefaultSampling(),
		Controls: workbench.DefaultControls(8), Jobs: jobs, Policy: workbench.Policy{Files: space, MaxTokens: 4096, MaxMessage: 1000, MaxRead: 1 << 20}})
	w.close = func() { space.Close() }
	return w
}

func (w *confinedWorld) run(line string) string {
	res := w.session.Run(line)
	if res.Slow != nil {
		res = res.Slow()
	}
	if res.Action == workbench.Replay { // as every front end opens it
		if _, err := w.session.OpenRecording(res.Arg); err != nil {
			return err.Error()
		}
	}
	return res.Notice
}

// check fails when anything reached outside the user's folder: a file written beside it, or a job's command line
// naming a path outside its run (the model is the server's own) or a reward program the operator did not allow.
func (w *confinedWorld) check(t testing.TB, line string) {
	entries, _ := os.ReadDir(w.outside)
	if len(entries) != 1 {
		t.Fatalf("%q wrote outside the user's folder: %v", line, entries)
	}
	if raw, err := os.ReadFile(filepath.Join(w.outside, "secret")); err != nil || string(raw) != "root:x:0:0\n" {
		t.Fatalf("%q changed a file outside the user's folder", line)
	}
	raw, _ := os.ReadFile(w.argvLog)
	for _, argv := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if argv == "" {
			continue
		}
		args := strings.Split(strings.TrimSuffix(argv, "\x00"), "\x00")
		for i, a := range args {
			if strings.HasPrefix(a, "/") && a != "/models/m" && !strings.HasPrefix(a, w.runs+"/") && a != w.runs {
				t.Fatalf("%q: the job's command line names %q outside its runs: %q", line, a, args)
			}
			if i > 0 && args[i-1] == "--reward" && strings.Contains(a, "cmd:") && !strings.Contains(a, "cmd:/opt/judge") {
				t.Fatalf("%q: the job runs a reward program: %q", line, args)
			}
			if strings.HasPrefix(a, "--") && slices.Contains([]string{"--out", "--resume", "--axis", "--value-model", "--json"}, strings.SplitN(a, "=", 2)[0]) {
				t.Fatalf("%q: the job got %s", line, a)
			}
		}
	}
}

// A remote user's paths resolve inside their folder, whatever they type.
func TestConfinedPaths(t *testing.T) {
	w := newConfinedWorld(t)
	defer w.close()
	for line, want := range map[string]string{
		"/save /etc/passwd":                       "saved 0 turns to ~/etc/passwd",
		"/save ../../x":                           "outside your folder",
		"/save link/x":                            "outside your folder",
		"/save secretlink":                        "is a symbolic link",
		"/replay secretlink":                      "outside your folder",
		"/replay fifo":                            "not a regular file (a FIFO)",
		"/replay /etc/shadow":                     "no such file in your folder",
		"/replay ../outside/secret":               "outside your folder",
		"/train sft --data fifo":                  "not a regular file",
		"/train sft --data link/secret --steps 2": "outside your folder",
		"/train ppo --prompts d.jsonl --reward 2*cmd:/bin/sh":      "rewards that run a program are off",
		"/train ppo --prompts d.jsonl --reward rm:/models/other":   "not offered over SSH",
		"/train sft --data d.jsonl --resume x":                     "--resume is not offered",
		"/train sft --data d.jsonl --lr nan":                       "not a finite number",
		"/train sft --data d.jsonl --steps 2":                      "started job sft-",
		"/train ppo --prompts d.jsonl --reward 0.5*cmd:/opt/judge": "started job ppo-",
		"/cancel ../bob/sft-20261207-101500-a1b2c3":                "is not a job id",
	} {
		if got := w.run(line); !strings.Contains(got, want) {
			t.Errorf("%q: %q, want %q", line, got, want)
		}
		w.check(t, line)
	}
	if _, err := os.Stat(filepath.Join(w.space, "etc", "passwd")); err != nil {
		t.Fatalf("an absolute path lands inside the folder: %v", err)
	}
	raw, _ := os.ReadFile(w.argvLog)
	if !bytes.Contains(raw, []byte("--max-memory\x001073741824")) || !bytes.Contains(raw, []byte("--threads\x002")) {
		t.Fatalf("jobs run without their bounds: %q", raw)
	}
}

// Whatever a remote user types, nothing outside their folder is written, read into a job, or run.
func FuzzRemoteCommandLine(f *testing.F) {
	for _, s := range []string{"/save ../x", "/save /etc/passwd", "/save link/x", "/replay secretlink", "/replay fifo",
		"/train sft --data d.jsonl --steps 3", "/train sft --data=../../outside/secret", "/train sft --data link/secret",
		"/train ppo --prompts d.jsonl --reward 2*cmd:/bin/sh", "/train ppo --prompts d.jsonl --reward=cmd:/opt/judge",
		"/train alol --data d.jsonl --reward axis --algorithm a_lol", "/train sft --data d.jsonl --run-dir /tmp", "/cancel ../x",
		"/load sft-20261207-101500-a1b2c3", "/set max-tokens 99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		w := newConfinedWorld(t)
		defer w.close()
		w.run(line)
		w.check(t, line)
		if s := w.session.Sampling(); s.MaxTokens > 4096 {
			t.Fatalf("%q: max-tokens %d past the bound", line, s.MaxTokens)
		}
	})
}
