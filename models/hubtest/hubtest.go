// Package hubtest lays models out as huggingface_hub does and serves them as the Hugging Face hub does, for the
// tests of keel's cache reader and hub client (package models) and of the commands that take a model by id.
package hubtest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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

// WriteCache writes files (slash-separated names, subfolders allowed) into the hub cache folder hub as
// huggingface_hub does: each file's bytes once in blobs/ under their sha256, the snapshot's entries relative
// symlinks to them, refs/REF naming the commit. It returns the snapshot folder.
func WriteCache(t testing.TB, hub, repo, ref, commit string, files map[string][]byte) string {
	t.Helper()
	root := filepath.Join(hub, "models--"+strings.ReplaceAll(repo, "/", "--"))
	snap := filepath.Join(root, "snapshots", commit)
	for _, d := range []string{filepath.Join(root, "blobs"), filepath.Join(root, "refs"), snap} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range files {
		sum := sha256.Sum256(body)
		blob := filepath.Join(root, "blobs", hex.EncodeToString(sum[:]))
		if err := os.WriteFile(blob, body, 0o644); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(snap, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			t.Fatal(err)
		}
		target, _ := filepath.Rel(filepath.Dir(link), blob)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "refs", ref), []byte(commit), 0o644); err != nil {
		t.Fatal(err)
	}
	return snap
}

// ReadFolder reads every file under dir, named by its slash-separated path inside it.
func ReadFolder(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		raw, err := os.ReadFile(p)
		files[filepath.ToSlash(rel)] = raw
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// GitBlobID is a file's git blob id: the sha1 of "blob SIZE\0" and its bytes (the hub's id of a small file).
func GitBlobID(b []byte) string {
	s := sha1.New()
	fmt.Fprintf(s, "blob %d\x00", len(b))
	s.Write(b)
	return hex.EncodeToString(s.Sum(nil))
}

// Server speaks the hub's file-resolution protocol on loopback for one repository at one commit: the revision
// listing (/api/models/ORG/NAME/revision/main?blobs=true, with blob ids, sizes and LFS hashes; any other revision
// is RevisionNotFound) and /ORG/NAME/resolve/COMMIT/FILE (LFS files through a redirect, as the hub sends them to
// its CDN), Range requests honoured.
type Server struct {
	*httptest.Server
	Repo, Commit string
	Files        map[string][]byte
	LFS          map[string]bool // files served as LFS (their id a sha256, through the redirect)
	Token        string          // the bearer token required ("" for none)

	mu       sync.Mutex
	cut      map[string]bool
	corrupt  map[string]bool
	status   int
	code     string
	requests int
	ranges   []string
}

// NewServer serves files of repo at commit until the test ends.
func NewServer(t testing.TB, repo, commit string, files map[string][]byte, lfs map[string]bool) *Server {
	h := &Server{Repo: repo, Commit: commit, Files: files, LFS: lfs, cut: map[string]bool{}, corrupt: map[string]bool{}}
	h.Server = httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(h.Close)
	return h
}

// Cut makes the next response of a file stop halfway, as a dropped connection does.
func (h *Server) Cut(name string) { h.mu.Lock(); h.cut[name] = true; h.mu.Unlock() }

// Corrupt serves a file's bytes changed (or, with false, as they are).
func (h *Server) Corrupt(name string, on bool) { h.mu.Lock(); h.corrupt[name] = on; h.mu.Unlock() }

// Refuse answers every request with status and X-Error-Code code (0: serve again).
func (h *Server) Refuse(status int, code string) {
	h.mu.Lock()
	h.status, h.code = status, code
	h.mu.Unlock()
}

// Requests is the number of requests served so far.
func (h *Server) Requests() int { h.mu.Lock(); defer h.mu.Unlock(); return h.requests }

// Ranges are the Range headers received since the last call, which clears them.
func (h *Server) Ranges() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.ranges
	h.ranges = nil
	return r
}

func (h *Server) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.requests++
	status, code := h.status, h.code
	if rg := r.Header.Get("Range"); rg != "" {
		h.ranges = append(h.ranges, rg)
	}
	h.mu.Unlock()
	if h.Token != "" && r.Header.Get("Authorization") != "Bearer "+h.Token && !strings.HasPrefix(r.URL.Path, "/cdn/") {
		status, code = http.StatusUnauthorized, "RepoNotFound"
	}
	if status != 0 {
		w.Header().Set("X-Error-Code", code)
		http.Error(w, code, status)
		return
	}
	switch {
	case r.URL.Path == "/api/models/"+h.Repo+"/revision/main":
		var siblings []map[string]any
		for name, b := range h.Files {
			sib := map[string]any{"rfilename": name, "size": len(b), "blobId": GitBlobID(b)}
			if h.LFS[name] {
				sum := sha256.Sum256(b)
				sib["lfs"] = map[string]any{"sha256": hex.EncodeToString(sum[:]), "size": len(b)}
			}
			siblings = append(siblings, sib)
		}
		json.NewEncoder(w).Encode(map[string]any{"id": h.Repo, "sha": h.Commit, "siblings": siblings})
	case strings.HasPrefix(r.URL.Path, "/api/models/"+h.Repo+"/"):
		w.Header().Set("X-Error-Code", "RevisionNotFound")
		http.Error(w, "no revision", http.StatusNotFound)
	case strings.HasPrefix(r.URL.Path, "/"+h.Repo+"/resolve/"+h.Commit+"/"):
		name := strings.TrimPrefix(r.URL.Path, "/"+h.Repo+"/resolve/"+h.Commit+"/")
		if h.LFS[name] {
			http.Redirect(w, r, "/cdn/"+name, http.StatusFound)
			return
		}
		h.send(w, r, name)
	case strings.HasPrefix(r.URL.Path, "/cdn/"):
		h.send(w, r, strings.TrimPrefix(r.URL.Path, "/cdn/"))
	default:
		w.Header().Set("X-Error-Code", "RepoNotFound")
		http.Error(w, "no such repository", http.StatusNotFound)
	}
}

func (h *Server) send(w http.ResponseWriter, r *http.Request, name string) {
	body, ok := h.Files[name]
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
