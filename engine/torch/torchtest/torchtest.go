// Package torchtest gives tests a loaded libtorch runtime and the repository's fixtures. A missing shim or fixture
// fails the test (it never skips): `make test` builds the shim first, and CI must exercise everything.
package torchtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keel-lab/keel/engine/torch"
)

// Runtime loads the shim or fails the test.
func Runtime(t testing.TB) *torch.Runtime {
	t.Helper()
	rt, err := torch.Load()
	if err != nil {
		t.Fatalf("%v", err)
	}
	return rt
}

// Fixtures returns the fixtures folder: $KEEL_FIXTURES, or testdata/ at the repository root.
func Fixtures(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("KEEL_FIXTURES"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for dir := wd; filepath.Dir(dir) != dir; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			f := filepath.Join(dir, "testdata")
			if _, err := os.Stat(filepath.Join(f, "stories260k", "stories260K.bin")); err != nil {
				t.Fatalf("fixtures not found at %s: restore testdata/ from the repository (git checkout -- testdata) or set KEEL_FIXTURES", f)
			}
			return f
		}
	}
	t.Fatal("repository root (go.mod) not found above the test's folder; set KEEL_FIXTURES")
	return ""
}
