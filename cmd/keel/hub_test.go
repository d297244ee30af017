package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/models/hubtest"
)

// hubCache lays the embedded persona model (with its axis/) out in a fresh Hugging Face cache as huggingface_hub
// writes a download: blobs named by their hash, the snapshot's files relative symlinks into blobs/, refs/main
// naming the commit. HF_HUB_CACHE points at it for the test.
func hubCache(t *testing.T, repo string) (hub, snapshot string) {
	t.Helper()
	src, err := models.Resolve(models.PersonaName, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	hub = t.TempDir()
	snapshot = hubtest.WriteCache(t, hub, repo, "main", strings.Repeat("5e", 20), hubtest.ReadFolder(t, src))
	t.Setenv("HF_HUB_CACHE", hub)
	return hub, snapshot
}

// Every command that takes a model loads one from the Hugging Face cache by its id, as a user of transformers or
// vLLM names it, and answers exactly as with the folder itself; `keel model list` shows it.
func TestCommandsLoadAHubIDFromTheCache(t *testing.T) {
	torchtest.Runtime(t)
	_, snap := hubCache(t, "acme/persona")
	for _, args := range [][]string{
		{"generate", "--max-tokens", "12", "--temperature", "0", "--prompt", "Hello there"},
		{"generate", "--max-tokens", "12", "--temperature", "0", "--cap", "on", "--prompt", "Hello there"}, // the axis/ of the snapshot
		{"tokenize", "--json", "Hello there"},
		{"model", "fit", "--json"},
	} {
		code, byFolder, stderr := runKeel(append(append([]string{}, args...), "--model", snap)...)
		if code != 0 {
			t.Fatalf("keel %v --model FOLDER: exit %d: %s", args, code, stderr)
		}
		for _, id := range []string{"acme/persona", "acme/persona@main"} {
			code, byID, stderr := runKeel(append(append([]string{}, args...), "--model", id)...)
			if code != 0 || byID != byFolder {
				t.Errorf("keel %v --model %s: exit %d %s\n%q\nby folder: %q", args, id, code, stderr, byID, byFolder)
			}
		}
	}
	// The line REPL (keel chat with a pipe for stdin) answers by id as by folder; a one-step fine-tune takes the
	// id too.
	chat := func(model string) (int, string, string) {
		in, err := os.CreateTemp(t.TempDir(), "stdin")
		if err != nil {
			t.Fatal(err)
		}
		in.WriteString("Hello there\n/quit\n")
		in.Seek(0, 0)
		saved := os.Stdin
		os.Stdin = in
		defer func() { os.Stdin = saved; in.Close() }()
		return runKeel("chat", "--model", model, "--no-record", "--temperature", "0", "--max-tokens", "6")
	}
	_, chatByFolder, _ := chat(snap)
	if code, chatByID, stderr := chat("acme/persona"); code != 0 || chatByID != chatByFolder || len(strings.TrimSpace(chatByID)) == 0 {
		t.Errorf("chat by id: exit %d %q (by folder %q) %s", code, chatByID, chatByFolder, stderr)
	}
	data := filepath.Join(t.TempDir(), "data.jsonl")
	os.WriteFile(data, []byte(strings.Repeat(`{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello."}]}`+"\n", 4)), 0o644)
	code, trained, stderr := runKeel("train", "sft", "--model", "acme/persona", "--data", data, "--steps", "1", "--batch", "2", "--seq-len", "32", "--runs", t.TempDir())
	if code != 0 {
		t.Errorf("train sft by id: exit %d %s %s", code, trained, stderr)
	}
	code, info, stderr := runKeel("model", "info", "--model", "acme/persona")
	if code != 0 || !strings.Contains(info, snap) || !strings.Contains(info, "LlamaForCausalLM") {
		t.Errorf("model info: exit %d %s %s", code, info, stderr)
	}
	out := filepath.Join(t.TempDir(), "m.gguf")
	if code, _, stderr := runKeel("export", "gguf", "--model", "acme/persona", "--out", out); code != 0 {
		t.Errorf("export gguf: exit %d %s", code, stderr)
	}
	code, list, stderr := runKeel("model", "list")
	if code != 0 || !strings.Contains(list, "acme/persona") || !strings.Contains(list, "persona (embedded)") || !strings.Contains(list, snap) {
		t.Errorf("model list: exit %d\n%s%s", code, list, stderr)
	}
	// Not cached, offline: one line naming the id and why; a path that is not there is named as one.
	t.Setenv("HF_HUB_OFFLINE", "1")
	for ref, want := range map[string]string{"acme/missing": "HF_HUB_OFFLINE", "acme/persona@v9": "not in the Hugging Face cache", "./no/such/dir/x": "no such folder"} {
		code, _, stderr := runKeel("generate", "--model", ref, "--prompt", "Hi")
		if code == 0 || !strings.Contains(stderr, want) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("--model %s: exit %d %q", ref, code, stderr)
		}
	}
}

// --model persona is the embedded model, as the default is.
func TestPersonaByNameEverywhere(t *testing.T) {
	torchtest.Runtime(t)
	args := []string{"generate", "--max-tokens", "8", "--temperature", "0", "--prompt", "Hi"}
	_, byDefault, _ := runKeel(args...)
	code, byName, stderr := runKeel(append(args, "--model", "persona")...)
	if code != 0 || byName != byDefault {
		t.Fatalf("--model persona: exit %d %s %q vs %q", code, stderr, byName, byDefault)
	}
	var mf cli.ModelFlags
	mf.Dir = "persona"
	if err := mf.Resolve(); err != nil || filepath.Base(filepath.Dir(mf.Dir)) != "models" {
		t.Fatalf("persona resolves to %q: %v", mf.Dir, err)
	}
}

// keel pull fetches a model from a hub (here a loopback server speaking the hub's protocol) into the cache,
// and every command then loads it by id offline.
func TestPullThenLoadByID(t *testing.T) {
	torchtest.Runtime(t)
	src, err := models.Resolve(models.PersonaName, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	commit := strings.Repeat("7a", 20)
	files := map[string][]byte{}
	for _, name := range models.PersonaFiles {
		raw, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = raw
	}
	lfs := map[string]bool{}
	for name := range files {
		lfs[name] = true
	}
	srv := hubtest.NewServer(t, "acme/persona", commit, files, lfs)
	hub := t.TempDir()
	t.Setenv("HF_HUB_CACHE", hub)
	t.Setenv("HF_ENDPOINT", srv.URL)
	t.Setenv("HF_HUB_OFFLINE", "")
	code, out, stderr := runKeel("pull", "acme/persona")
	if code != 0 || !strings.Contains(out, filepath.Join(hub, "models--acme--persona", "snapshots", commit)) || !strings.Contains(stderr, "100.0%") {
		t.Fatalf("keel pull: exit %d %s %s", code, out, stderr)
	}
	code, _, stderr = runKeel("pull", "acme/nothing")
	if code == 0 || !strings.Contains(stderr, "no such repository") {
		t.Fatalf("keel pull of a missing repo: exit %d %s", code, stderr)
	}
	t.Setenv("HF_HUB_OFFLINE", "1")
	before := srv.Requests()
	_, want, _ := runKeel("generate", "--model", src, "--max-tokens", "6", "--temperature", "0", "--prompt", "Hi")
	code, got, stderr := runKeel("generate", "--model", "acme/persona", "--max-tokens", "6", "--temperature", "0", "--prompt", "Hi")
	if code != 0 || got != want || srv.Requests() != before {
		t.Fatalf("generate by id after the pull: exit %d %q (the folder's %q) %s; %d requests", code, got, want, stderr, srv.Requests()-before)
	}
	// Without HF_HUB_OFFLINE a model the cache lacks is fetched on first use.
	t.Setenv("HF_HUB_OFFLINE", "")
	t.Setenv("HF_HUB_CACHE", t.TempDir())
	code, got, stderr = runKeel("generate", "--model", "acme/persona", "--max-tokens", "6", "--temperature", "0", "--prompt", "Hi")
	if code != 0 || got != want || !strings.Contains(stderr, "fetching acme/persona") {
		t.Fatalf("generate fetching on first use: exit %d %q %s", code, got, stderr)
	}
}
