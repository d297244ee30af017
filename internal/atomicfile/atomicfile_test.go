package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// A write that fails halfway leaves the old file as it was and no temporary file behind.
func TestFailedWriteKeepsTheOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "report.json")
	if err := WriteFile(path, []byte("good\n")); err != nil {
		t.Fatal(err)
	}
	err := Write(path, func(f *os.File) error {
		f.Write([]byte("half of a new fi"))
		return errors.New("disk full")
	})
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), path) {
		t.Fatalf("want the failure named with the path, got %v", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "good\n" {
		t.Fatalf("the old file changed: %q", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
	if err := WriteJSON(path, map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "{\n  \"a\": 1\n}\n" {
		t.Fatalf("WriteJSON wrote %q", got)
	}
}

// Every file keel writes goes through this package, except the writers listed here with the reason. A new
// os.WriteFile, os.Create or os.OpenFile(O_CREATE) elsewhere fails this test: route it through atomicfile, or add
// it here with why a fragment cannot hurt.
func TestEveryWriterIsAtomic(t *testing.T) {
	allowed := map[string]struct {
		n      int
		reason string
	}{
		"train/job.go":        {4, "the cancel and pause markers (empty: their existence is the message); metrics.jsonl and metrics.csv, append-only logs written a line per step"},
		"train/detach.go":     {1, "log.txt, an append-only log"},
		"sessions/session.go": {1, "a recording is created once (O_EXCL) and appended turn by turn as the chat goes"},
		"models/embed.go":     {2, "files unpacked into a temporary folder that is renamed into place whole"},
		"models/pull.go":      {2, "a blob's .incomplete part, appended to across resumed downloads and renamed into place once its hash checks; the lock file huggingface_hub shares"},
		"bench/devcheck.go":   {4, "scratch files of the device check, in its own temporary folder"},
		"bench/tokenize.go":   {1, "the benchmark's scratch input, in a temporary folder"},
		"bench/hostile.go":    {3, "the benchmark's server's keys and its hostile user's files, in a temporary folder"},
		"cmd/keel/main.go":    {1, "a CPU profile the user asked for with KEEL_CPUPROFILE"},
		"cmd/keel/serve.go":   {1, "serve.log, an append-only log"},
		"provider/cache.go":   {1, "the answers cache, append-only: one write per answer, a torn last line is skipped on reading"},
	}
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	writer := regexp.MustCompile(`os\.(WriteFile|Create)\(|os\.OpenFile\(.*O_CREATE`)
	counts := map[string]int{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || rel == "internal" || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") || strings.Contains(rel, "test/") {
			return nil
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(raw), "\n") {
			if writer.MatchString(line) {
				counts[filepath.ToSlash(rel)]++
				t.Logf("%s:%d: %s", rel, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for file, n := range counts {
		if n > allowed[file].n {
			t.Errorf("%s writes %d file(s) outside atomicfile (%d allowed): use atomicfile.Write/WriteFile/WriteJSON", file, n, allowed[file].n)
		}
	}
}
