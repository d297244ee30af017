package models

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakeHubServer speaks the hub's file-resolution protocol on loopback: the revision listing
// (/api/models/ORG/NAME/revision/REV?blobs=true, with blob ids, sizes and LFS hashes) and
// /ORG/NAME/resolve/COMMIT/FILE (LFS files through a redirect, as the hub sends them to its CDN), with Range
// requests honoured. cut makes the first response of a file stop halfway (a dropped connection); corrupt serves
// a file's bytes changed; status answers every request with that status and X-Error-Code.
type fakeHubServer struct {
	*httptest.Server
	repo, commit string
	files        map[string][]byte
	lfs          map[string]bool
	token        string // the bearer token required ("" for none)

	mu       sync.Mutex
	cut      map[string]bool
	corrupt  map[string]bool
	status   int
	code     string
	requests int
	ranges   []string
}

func newFakeHub(t *testing.T) *fakeHubServer {
	weights := bytes.Repeat([]byte("weights!"), 40_000) // 320 KB
	h := &fakeHubServer{repo: "acme/tiny", commit: strings.Repeat("c0", 20), cut: map[string]bool{}, corrupt: map[string]bool{},
		files: map[string][]byte{"config.json": []byte(`{"architectures":["LlamaForCausalLM"]}`), "tokenizer.json": []byte(`{"model":{}}`),
			"model.safetensors": weights, "README.md": []byte("# not fetched"), "pytorch_model.bin": []byte("not fetched")},
		lfs: map[string]bool{"model.safetensors": true, "pytorch_model.bin": true}}
	h.Server = httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(h.Close)
	return h
}

func gitBlobID(b []byte) string {
	s := sha1.New()
	fmt.Fprintf(s, "blob %d\x00", len(b))
	s.Write(b)
	return hex.EncodeToString(s.Sum(nil))
}

func (h *fakeHubServer) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.requests++
	status, code := h.status, h.code
	if rg := r.Header.Get("Range"); rg != "" {
		h.ranges = append(h.ranges, rg)
	}
	h.mu.Unlock()
	if h.token != "" && r.Header.Get("Authorization") != "Bearer "+h.token && !strings.HasPrefix(r.URL.Path, "/cdn/") {
		status, code = http.StatusUnauthorized, "RepoNotFound"
	}
	if status != 0 {
		w.Header().Set("X-Error-Code", code)
		http.Error(w, code, status)
		return
	}
	switch {
	case r.URL.Path == "/api/models/"+h.repo+"/revision/main":
		var siblings []map[string]any
		for name, b := range h.files {
			sib := map[string]any{"rfilename": name, "size": len(b), "blobId": gitBlobID(b)}
			if h.lfs[name] {
				sum := sha256.Sum256(b)
				sib["lfs"] = map[string]any{"sha256": hex.EncodeToString(sum[:]), "size": len(b)}
			}
			siblings = append(siblings, sib)
		}
		json.NewEncoder(w).Encode(map[string]any{"id": h.repo, "sha": h.commit, "siblings": siblings})
	case strings.HasPrefix(r.URL.Path, "/api/models/"):
		w.Header().Set("X-Error-Code", "RevisionNotFound")
		http.Error(w, "no revision", http.StatusNotFound)
	case strings.HasPrefix(r.URL.Path, "/"+h.repo+"/resolve/"+h.commit+"/"):
		name := strings.TrimPrefix(r.URL.Path, "/"+h.repo+"/resolve/"+h.commit+"/")
		if h.lfs[name] {
			http.Redirect(w, r, "/cdn/"+name, http.StatusFound)
			return
		}
		h.send(w, r, name)
	case strings.HasPrefix(r.URL.Path, "/cdn/"):
		h.send(w, r, strings.TrimPrefix(r.URL.Path, "/cdn/"))
	default:
		http.NotFound(w, r)
	}
}

func (h *fakeHubServer) send(w http.ResponseWriter, r *http.Request, name string) {
	body, ok := h.files[name]
	if !ok {
		w.Header().Set("X-Error-Code", "EntryNotFound")
		http.Error(w, "no file", http.StatusNotFound)
		return
	}
	h.mu.Lock()
	cut, corrupt := h.cut[name], h.corrupt[name]
	h.cut[name] = false
	h.mu.Unlock()
	if corrupt {
		body = append([]byte("X"), body[1:]...)
	}
	from := 0
	if rg := r.Header.Get("Range"); strings.HasPrefix(rg, "bytes=") {
		from, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(body)-1, len(body)))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)-from))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	if cut { // half the bytes, then the connection drops
		w.Write(body[from : from+(len(body)-from)/2])
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
		return
	}
	w.Write(body[from:])
}

func (h *fakeHubServer) puller(t *testing.T, hub string) *Puller {
	return &Puller{Endpoint: h.URL, Hub: hub, Token: h.token, Retries: 2}
}

// A model fetched from the hub lands in the cache as huggingface_hub lays it out (blobs named by their hash, the
// snapshot's files relative symlinks to them, refs/main naming the commit), only what keel loads, a connection
// cut halfway resumed with a Range request, and the resolver then reads it without asking the hub again.
func TestPullWritesTheHubCacheAndResumes(t *testing.T) {
	h := newFakeHub(t)
	h.token = "hf_secret"
	hub := t.TempDir()
	h.cut["model.safetensors"] = true
	var last, total int64
	p := h.puller(t, hub)
	p.Progress = func(done, all int64) { last, total = done, all }
	snap, err := p.Pull(context.Background(), HubID{Repo: h.repo, Revision: "main"})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(hub, "models--acme--tiny")
	if snap != filepath.Join(root, "snapshots", h.commit) {
		t.Fatalf("snapshot %s", snap)
	}
	for name, body := range h.files {
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
	sum := sha256.Sum256(h.files["model.safetensors"])
	if _, err := os.Stat(filepath.Join(root, "blobs", hex.EncodeToString(sum[:]))); err != nil {
		t.Error("the weights' blob is not named by its sha256")
	}
	if _, err := os.Stat(filepath.Join(root, "blobs", gitBlobID(h.files["config.json"]))); err != nil {
		t.Error("config.json's blob is not named by its git blob id")
	}
	if ref, _ := os.ReadFile(filepath.Join(root, "refs", "main")); string(ref) != h.commit {
		t.Errorf("refs/main: %q", ref)
	}
	// The resume asks for the second half, at the resolve URL and again at the redirect's.
	want := fmt.Sprintf("bytes=%d-", len(h.files["model.safetensors"])/2)
	if len(h.ranges) == 0 || strings.Count(strings.Join(h.ranges, " "), want) != len(h.ranges) {
		t.Errorf("the cut download resumed with %v, want %s", h.ranges, want)
	}
	if total == 0 || last != total {
		t.Errorf("progress ended at %d of %d", last, total)
	}
	if _, err := os.Stat(filepath.Join(hub, ".locks", "models--acme--tiny")); err != nil {
		t.Error("no lock folder beside the cache")
	}
	// The resolver reads what was written, offline and without a request.
	before := h.requests
	t.Setenv("HF_HUB_CACHE", hub)
	off := h.puller(t, hub)
	off.Offline = true
	dir, err := Resolve("acme/tiny", t.TempDir(), off)
	if err != nil || dir != snap || h.requests != before {
		t.Fatalf("resolved %q %v after %d requests", dir, err, h.requests-before)
	}
	// A second pull finds every blob cached and fetches no file.
	if _, err := p.Pull(context.Background(), HubID{Repo: h.repo, Revision: "main"}); err != nil || h.requests != before+1 {
		t.Fatalf("a second pull: %v, %d requests", err, h.requests-before)
	}
}

// A download cut more often than the retries allow keeps its part, and the next pull resumes it.
func TestPullResumesAcrossRuns(t *testing.T) {
	h := newFakeHub(t)
	hub := t.TempDir()
	p := h.puller(t, hub)
	p.Retries = 1 // two tries, each cut
	p.Parallel = 1
	h.mu.Lock()
	h.cut["model.safetensors"] = true
	h.mu.Unlock()
	cutAgain := func() { h.mu.Lock(); h.cut["model.safetensors"] = true; h.mu.Unlock() }
	p.Progress = func(done, total int64) {
		if done > 0 && done < total {
			cutAgain()
		}
	}
	if _, err := p.Pull(context.Background(), HubID{Repo: h.repo, Revision: "main"}); err == nil || !strings.Contains(err.Error(), "resume") {
		t.Fatalf("a pull cut on every try: %v", err)
	}
	parts, _ := filepath.Glob(filepath.Join(hub, "models--acme--tiny", "blobs", "*.incomplete"))
	if len(parts) != 1 {
		t.Fatalf("parts kept: %v", parts)
	}
	p.Progress = nil
	h.ranges = nil
	if _, err := p.Pull(context.Background(), HubID{Repo: h.repo, Revision: "main"}); err != nil {
		t.Fatal(err)
	}
	if len(h.ranges) == 0 {
		t.Fatal("the second run fetched the whole file again")
	}
}

// What goes wrong is one line naming why and what to do, and nothing wrong is left in the cache.
func TestPullRefusals(t *testing.T) {
	h := newFakeHub(t)
	hub := t.TempDir()
	p := h.puller(t, hub)
	id := HubID{Repo: h.repo, Revision: "main"}
	h.corrupt["model.safetensors"] = true
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
	if _, err := os.Stat(filepath.Join(hub, "models--acme--tiny", "snapshots", h.commit, "model.safetensors")); err == nil {
		t.Fatal("the snapshot links a file that failed its check")
	}
	h.corrupt = map[string]bool{}
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
		h.status, h.code = c.status, c.code
		_, err := p.Pull(context.Background(), id)
		var he *HubError
		if !errors.As(err, &he) || he.Status != c.status || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%d %s: %v", c.status, c.code, err)
		}
	}
	h.status = 0
	before := h.requests
	p.Offline = true
	if _, err := p.Pull(context.Background(), id); err == nil || !strings.Contains(err.Error(), "HF_HUB_OFFLINE") || h.requests != before {
		t.Fatalf("offline: %v after %d requests", err, h.requests-before)
	}
	// A revision the hub does not know.
	p.Offline = false
	if _, err := p.Pull(context.Background(), HubID{Repo: h.repo, Revision: "v9"}); err == nil || !strings.Contains(err.Error(), "no revision") {
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
