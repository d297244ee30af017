package models

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/models/hubtest"
)

func TestParseHubID(t *testing.T) {
	for in, want := range map[string]string{"acme/persona": "acme/persona@main", "acme/persona@v1.0": "acme/persona@v1.0",
		"Qwen/Qwen3-0.6B@0123456789abcdef0123456789abcdef01234567": "Qwen/Qwen3-0.6B@0123456789abcdef0123456789abcdef01234567"} {
		id, ok := ParseHubID(in)
		if !ok || id.Repo+"@"+id.Revision != want {
			t.Errorf("%q: %+v %v", in, id, ok)
		}
	}
	for _, bad := range []string{"persona", "./models/x", "/abs/path", "a/b/c", "../x", "a/..", "acme/persona@", "acme/persona@../../etc", "-a/b", "a/b."} {
		if id, ok := ParseHubID(bad); ok {
			t.Errorf("%q read as %+v", bad, id)
		}
	}
}

// An id resolves to its snapshot through refs/, through a commit hash directly, and through HF_HOME; a missing
// repository or revision is ErrNotCached with the way to fetch it.
func TestResolveReadsTheHubCache(t *testing.T) {
	home := t.TempDir()
	hub := filepath.Join(home, "hub")
	commit := strings.Repeat("ab", 20)
	snap := hubtest.WriteCache(t, hub, "acme/persona", "main", commit, map[string][]byte{"config.json": []byte("{}"), "tokenizer.json": []byte("{}")})
	t.Setenv("HF_HUB_CACHE", "")
	t.Setenv("HF_HOME", home)
	for _, ref := range []string{"acme/persona", "acme/persona@main", "acme/persona@" + commit} {
		dir, err := Resolve(ref, t.TempDir(), nil)
		if err != nil || dir != snap {
			t.Errorf("%s: %q %v, want %s", ref, dir, err, snap)
		}
	}
	if raw, err := os.ReadFile(filepath.Join(snap, "config.json")); err != nil || string(raw) != "{}" {
		t.Fatalf("through the symlink: %q %v", raw, err)
	}
	for _, ref := range []string{"acme/other", "acme/persona@v2"} {
		_, err := Resolve(ref, t.TempDir(), nil)
		if !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "keel pull") {
			t.Errorf("%s: %v", ref, err)
		}
	}
	if _, err := Resolve("no-such-folder", t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "ORG/NAME") {
		t.Errorf("a bare missing name: %v", err)
	}
	models, err := ListCache(hub)
	if err != nil || len(models) != 1 || models[0].ID.Repo != "acme/persona" || models[0].Snapshot != snap || models[0].Bytes != 2 { // two files of the same bytes are one blob
		t.Fatalf("ListCache: %+v %v", models, err)
	}
	t.Setenv("HF_HUB_CACHE", filepath.Join(home, "elsewhere"))
	if HubCacheDir() != filepath.Join(home, "elsewhere") {
		t.Fatal("HF_HUB_CACHE is not preferred")
	}
}

// "persona" is the embedded model, unpacked with its axis.
func TestPersonaByName(t *testing.T) {
	dir, err := Resolve(PersonaName, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"model.safetensors", "axis/axis.safetensors"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}
