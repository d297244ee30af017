package layering

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// allowed is what each top-level package may import of keel's own (besides itself and internal/), from the
// bottom up: docs/architecture.md draws the same layers.
var allowed = map[string][]string{
	"engine":    {},
	"models":    {},
	"provider":  {},
	"steer":     {"engine"},
	"sessions":  {"engine"},
	"train":     {"engine", "steer"},
	"probes":    {"engine", "steer", "provider"},
	"evals":     {"engine", "steer", "train", "probes", "models"},
	"workbench": {"engine", "steer", "train", "probes", "sessions"},
	"tui":       {"engine", "steer", "train", "probes", "sessions", "workbench"},
	"serve":     {"engine", "steer", "train", "probes", "sessions", "workbench", "tui"},
	"bench":     {"engine", "steer", "train", "probes", "sessions", "workbench", "serve", "evals", "models", "provider"},
	"cmd":       {"engine", "steer", "train", "probes", "sessions", "workbench", "tui", "serve", "evals", "models", "provider", "bench"},
}

const module = "github.com/keel-lab/keel/"

// Every import of keel's own packages, in every non-test Go file, goes down the layers; a new top-level package
// must be placed in the table.
func TestImportsFollowTheLayers(t *testing.T) {
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	checked := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules" || rel == "conformance" || rel == "internal") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		top := strings.Split(filepath.ToSlash(rel), "/")[0]
		may, ok := allowed[top]
		if !ok {
			t.Errorf("%s: top-level package %q is not in the layering table (internal/layering, docs/architecture.md)", rel, top)
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			path := strings.Trim(imp.Path.Value, `"`)
			if !strings.HasPrefix(path, module) {
				continue
			}
			dep := strings.Split(strings.TrimPrefix(path, module), "/")[0]
			if dep != top && dep != "internal" && !slices.Contains(may, dep) {
				t.Errorf("%s imports %s: %s may import only %v (and internal/)", rel, path, top, may)
			}
		}
		checked++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 100 {
		t.Fatalf("only %d files checked: the walk missed the tree", checked)
	}
}
