package models

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/models/hubtest"
)

// newFakeHub serves a small model on loopback (models/hubtest): a config, a tokenizer and 320 KB of weights keel
// fetches, a README and a .bin it leaves.
func newFakeHub(t *testing.T) *hubtest.Server {
	weights := bytes.Repeat([]byte("weights!"), 40_000)
	return hubtest.NewServer(t, "acme/tiny", strings.Repeat("c0", 20),
		map[string][]byte{"config.json": []byte(`{"architectures":["LlamaForCausalLM"]}`), "tokenizer.json": []byte(`{"model":{}}`),
			"model.safetensors": weights, "README.md": []byte("# not fetched"), "pytorch_model.bin": []byte("not fetched")},
		map[string]bool{"model.safetensors": true, "pytorch_model.bin": true})
}

func puller(h *hubtest.Server, hub string) *Puller {
	return &Puller{Endpoint: h.URL, Hub: hub, Token: h.Token, Retries: 2}
}

// A model fetched from the hub lands in the cache as huggingface_hub lays it out (blobs named by their hash, the
// snapshot's files relative symlinks to them, refs/main naming the commit), only what keel loads, a connection
// cut halfway resumed with a Range request, and the resolver then reads it without asking the hub again.
func TestPullWritesTheHubCacheAndResumes(t *testing.T) {
	h := newFakeHub(t)
	h.Token = "hf_secret"
	hub := t.TempDir()
	h.Cut("model.safetensors")
	var last, total int64
	p := puller(h, hub)
	p.Progress = func(done, all int64) { last, total = done, all }
	snap, err := p.Pull(context.Background(), HubID{Repo: h.Repo, Revision: "main"})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(hub, "models--acme--tiny")
	if snap != filepath.Join(root, "snapshots", h.Commit) {
		t.Fatalf("snapshot %s", snap)
	}
	for name, body := range h.Files {
		got, err := os.ReadFile(filepath.Join(snap, name))
		if name == "README.md" || name == "pytorch_model.bin" {
			if err == nil {
				t.Errorf("%s was fetched: keel does not load it", name)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("%s: %d bytes, %v", name, len(got), err)
		}
		link, err := os.Readlink(filepath.Join(snap, name))
		if err != nil || filepath.IsAbs(link) || !strings.HasPrefix(link, "../../blobs/") {
			t.Errorf("%s is not a relative link into blobs/: %q %v", name, link, err)
		}
	}
	sum := sha256.Sum256(h.Files["model.safetensors"])
	if _, err := os.Stat(filepath.Join(root, "blobs", hex.EncodeToString(sum[:]))); err != nil {
		t.Error("the weights' blob is not named by its sha256")
	}
	if _, err := os.Stat(filepath.Join(root, "blobs", hubtest.GitBlobID(h.Files["config.json"]))); err != nil {
		t.Error("config.json's blob is not named by its git blob id")
	}
	if ref, _ := os.ReadFile(filepath.Join(root, "refs", "main")); string(ref) != h.Commit {
		t.Errorf("refs/main: %q", ref)
	}
	// The resume asks for the second half, at the resolve URL and again at the redirect's.
	want := fmt.Sprintf("bytes=%d-", len(h.Files["model.safetensors"])/2)
	if ranges := h.Ranges(); len(ranges) == 0 || strings.Count(strings.Join(ranges, " "), want) != len(ranges) {
		t.Errorf("the cut download resumed with %v, want %s", ranges, want)
	}
	if total == 0 || last != total {
		t.Errorf("progress ended at %d of %d", last, total)
	}
	if _, err := os.Stat(filepath.Join(hub, ".locks", "models--acme--tiny")); err != nil {
		t.Error("no lock folder beside the cache")
	}
	// The resolver reads what was written, offline and without a request.
	before := h.Requests()
	t.Setenv("HF_HUB_CACHE", hub)
	off := puller(h, hub)
	off.Offline = true
	dir, err := Resolve("acme/tiny", t.TempDir(), func() *Puller { return off })
	if err != nil || dir != snap || h.Requests() != before {
		t.Fatalf("resolved %q %v after %d requests", dir, err, h.Requests()-before)
	}
	// A second pull finds every blob cached and fetches no file.
	if _, err := p.Pull(context.Background(), HubID{Repo: h.Repo, Revision: "main"}); err != nil || h.Requests() != before+1 {
		t.Fatalf("a second pull: %v, %d requests", err, h.Requests()-before)
	}
}

// A download cut more often than the retries allow keeps its part, and the next pull resumes it.
func TestPullResumesAcrossRuns(t *testing.T) {
	h := newFakeHub(t)
	hub := t.TempDir()
	p := puller(h, hub)
	p.Retries = 1 // two tries, each cut
	p.Parallel = 1
	h.Cut("model.safetensors")
	p.Progress = func(done, total int64) {
		if done > 0 && done < total {
			h.Cut("model.safetensors")
		}
	}
	if _, err := p.Pull(context.Background(), HubID{Repo: h.Repo, Revision: "main"}); err == nil || !strings.Contains(err.Error(), "resume") {
		t.Fatalf("a pull cut on every try: %v", err)
	}
	parts, _ := filepath.Glob(filepath.Join(hub, "models--acme--tiny", "blobs", "*.incomplete"))
	if len(parts) != 1 {
		t.Fatalf("parts kept: %v", parts)
	}
	p.Progress = nil
	h.Ranges() // clears them
	if _, err := p.Pull(context.Background(), HubID{Repo: h.Repo, Revision: "main"}); err != nil {
		t.Fatal(err)
	}
	if len(h.Ranges()) == 0 {
		t.Fatal("the second run fetched the whole file again")
	}
}

// What goes wrong is one line naming why and what to do, and nothing wrong is left in the cache.
func TestPullRefusals(t *testing.T) {
	h := newFakeHub(t)
	hub := t.TempDir()
	p := puller(h, hub)
	id := HubID{Repo: h.Repo, Revision: "main"}
	h.Corrupt("model.safetensors", true)
	_, err := p.Pull(context.Background(), id)
	if err == nil || !strings.Contains(err.Error(), "not the") || !strings.Contains(err.Error(), "discarded") {
		t.Fatalf("corrupt bytes: %v", err)
	}
	blobs, _ := filepath.Glob(filepath.Join(hub, "models--acme--tiny", "blobs", "*"))
	for _, b := range blobs {
		raw, _ := os.ReadFile(b)
		if bytes.HasPrefix(raw, []byte("Xeights")) {
			t.Fatalf("the corrupt file was kept as %s", b)
		}
	}
	if _, err := os.Stat(filepath.Join(hub, "models--acme--tiny", "snapshots", h.Commit, "model.safetensors")); err == nil {
		t.Fatal("the snapshot links a file that failed its check")
	}
	h.Corrupt("model.safetensors", false)
	for _, c := range []struct {
		status int
		code   string
		want   string
	}{
		{401, "RepoNotFound", "HF_TOKEN"},
		{403, "GatedRepo", "gated"},
		{404, "RepoNotFound", "no such repository"},
		{404, "RevisionNotFound", "no revision"},
	} {
		h.Refuse(c.status, c.code)
		_, err := p.Pull(context.Background(), id)
		var he *HubError
		if !errors.As(err, &he) || he.Status != c.status || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%d %s: %v", c.status, c.code, err)
		}
	}
	h.Refuse(0, "")
	before := h.Requests()
	p.Offline = true
	if _, err := p.Pull(context.Background(), id); err == nil || !strings.Contains(err.Error(), "HF_HUB_OFFLINE") || h.Requests() != before {
		t.Fatalf("offline: %v after %d requests", err, h.Requests()-before)
	}
	// A revision the hub does not know.
	p.Offline = false
	if _, err := p.Pull(context.Background(), HubID{Repo: h.Repo, Revision: "v9"}); err == nil || !strings.Contains(err.Error(), "no revision") {
		t.Fatalf("an unknown revision: %v", err)
	}
}

// The environment is read as huggingface_hub reads it: HF_ENDPOINT, HF_TOKEN before the token file,
// HF_HUB_OFFLINE.
func TestNewPullerReadsTheEnvironment(t *testing.T) {
	home := t.TempDir()
	os.WriteFile(filepath.Join(home, "token"), []byte("hf_from_file\n"), 0o600)
	t.Setenv("HF_HOME", home)
	t.Setenv("HF_HUB_CACHE", "")
	t.Setenv("HF_TOKEN", "")
	t.Setenv("HF_TOKEN_PATH", "")
	t.Setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
	t.Setenv("HF_HUB_OFFLINE", "1")
	p := NewPuller()
	if p.Token != "hf_from_file" || p.Endpoint != "http://127.0.0.1:9" || !p.Offline || p.Hub != filepath.Join(home, "hub") {
		t.Fatalf("%+v", p)
	}
	t.Setenv("HF_TOKEN", "hf_env")
	if NewPuller().Token != "hf_env" {
		t.Fatal("HF_TOKEN is not preferred to the token file")
	}
}
