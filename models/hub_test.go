package models

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeHub writes files into a hub-layout cache as huggingface_hub does: each file's bytes once in blobs/ under
// their hash, the snapshot's entries relative symlinks to them, refs/REV naming the commit.
func fakeHub(t *testing.T, hub, repo, ref, commit string, files map[string]string) string {
	t.Helper()
	root := filepath.Join(hub, "models--"+strings.ReplaceAll(repo, "/", "--"))
	snap := filepath.Join(root, "snapshots", commit)
	for _, d := range []string{filepath.Join(root, "blobs"), filepath.Join(root, "refs"), snap} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range files {
		sum := sha256.Sum256([]byte(body))
		blob := filepath.Join(root, "blobs", hex.EncodeToString(sum[:]))
		if err := os.WriteFile(blob, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(snap, blob)
		if err := os.Symlink(rel, filepath.Join(snap, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "refs", ref), []byte(commit), 0o644); err != nil {
		t.Fatal(err)
	}
	return snap
}

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
	snap := fakeHub(t, hub, "acme/persona", "main", commit, map[string]string{"config.json": "{}", "tokenizer.json": "{}"})
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
