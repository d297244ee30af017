// Package conformance finds the reference implementations the tests compare keel with: conformance/NAME in the
// repository, with the npm packages `npm ci` installs there (make test runs it).
package conformance

import (
	"os"
	"path/filepath"
	"testing"
)

// Dir is conformance/name at the repository's root, failing the test when node_modules/module is not installed.
func Dir(t testing.TB, name, module string) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for dir := wd; filepath.Dir(dir) != dir; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			c := filepath.Join(dir, "conformance", name)
			if _, err := os.Stat(filepath.Join(c, "node_modules", module)); err != nil {
				t.Fatalf("%s has no node_modules: run `npm ci` there (make test does)", c)
			}
			return c
		}
	}
	t.Fatal("repository root not found")
	return ""
}
