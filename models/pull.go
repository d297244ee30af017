package models

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keel-lab/keel/internal/atomicfile"
)

// Downloading writes the cache exactly as huggingface_hub does, so that transformers and vLLM find what keel
// fetched and keel finds what they fetched:
//
//	HUB/models--ORG--NAME/blobs/ETAG               a file's bytes; ETAG is the sha256 of an LFS file (weights)
//	                                               or the git blob id (sha1) of a small one, and both are checked
//	HUB/models--ORG--NAME/blobs/ETAG.incomplete    a download under way, resumed with a Range request
//	HUB/models--ORG--NAME/snapshots/COMMIT/FILE    a relative symlink to ../../blobs/ETAG
//	HUB/models--ORG--NAME/refs/REVISION            the commit REVISION (a branch or tag) was resolved to
//	HUB/.locks/models--ORG--NAME/ETAG.lock         held (flock) while a blob is written: two processes fetching
//	                                               one model write each blob once
//
// The protocol is the hub's: GET ENDPOINT/api/models/ORG/NAME/revision/REV?blobs=true lists the commit and its
// files with their ids and sizes; GET ENDPOINT/ORG/NAME/resolve/COMMIT/FILE serves a file (often by a redirect).

// Puller fetches models from a Hugging Face hub into the cache.
type Puller struct {
	Endpoint string       // the hub: HF_ENDPOINT, else https://huggingface.co
	Token    string       // HF_TOKEN, else the token file huggingface_hub writes ("" for none)
	Hub      string       // the cache folder (HubCacheDir)
	Offline  bool         // HF_HUB_OFFLINE=1: nothing is fetched
	Client   *http.Client // nil: one with a connect and header timeout
	Parallel int          // files fetched at once (0: 4)
	Retries  int          // attempts per file after a cut connection (0: 3), each resuming the last
	// Progress, when set, is told the bytes fetched so far of the bytes to fetch (a blob already cached counts as
	// fetched), from several goroutines.
	Progress func(done, total int64)
}

// NewPuller is a Puller set up from the environment as huggingface_hub reads it.
func NewPuller() *Puller {
	p := &Puller{Endpoint: "https://huggingface.co", Hub: HubCacheDir(), Offline: truthy(os.Getenv("HF_HUB_OFFLINE"))}
	if e := os.Getenv("HF_ENDPOINT"); e != "" {
		p.Endpoint = strings.TrimRight(e, "/")
	}
	p.Token = os.Getenv("HF_TOKEN")
	if p.Token == "" {
		tokenFile := os.Getenv("HF_TOKEN_PATH")
		if tokenFile == "" {
			home := os.Getenv("HF_HOME")
			if home == "" {
				if h, err := os.UserHomeDir(); err == nil {
					home = filepath.Join(h, ".cache", "huggingface")
				}
			}
			tokenFile = filepath.Join(home, "token")
		}
		if raw, err := os.ReadFile(tokenFile); err == nil {
			p.Token = strings.TrimSpace(string(raw))
		}
	}
	return p
}

func truthy(s string) bool {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// wanted reports whether keel loads a repository file: the config, the tokenizer's files, the generation config,
// the chat template and the safetensors weights with their index (not other formats' weights, not READMEs).
func wanted(name string) bool {
	if strings.Contains(name, "/") {
		return false
	}
	switch name {
	case "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
		"chat_template.jinja", "chat_template.json", "model.safetensors.index.json":
		return true
	}
	return strings.HasSuffix(name, ".safetensors")
}

// repoFile is one file of the listing.
type repoFile struct {
	Name   string `json:"rfilename"`
	Size   int64  `json:"size"`
	BlobID string `json:"blobId"`
	LFS    *struct {
		SHA256 string `json:"sha256"`
		Size   int64  `json:"size"`
	} `json:"lfs"`
}

// etag is the blob name and how to check it: an LFS file's sha256, else the git blob id.
func (f repoFile) etag() (string, func() hash.Hash, int64) {
	if f.LFS != nil {
		return f.LFS.SHA256, sha256.New, f.LFS.Size
	}
	size := f.Size
	return f.BlobID, func() hash.Hash {
		h := sha1.New()
		fmt.Fprintf(h, "blob %d\x00", size)
		return h
	}, size
}

// HubError is the hub refusing a request: the status, the hub's error code (X-Error-Code) and what to do.
type HubError struct {
	ID     HubID
	Status int
	Code   string
	What   string
}

func (e *HubError) Error() string { return fmt.Sprintf("%s: %s", e.ID, e.What) }

// Pull fetches what keel loads of id into the cache (what is there already is kept) and returns its snapshot.
func (p *Puller) Pull(ctx context.Context, id HubID) (string, error) {
	if p.Offline {
		dir, err := CachedSnapshot(p.Hub, id)
		if errors.Is(err, ErrNotCached) {
			return "", fmt.Errorf("%w, and HF_HUB_OFFLINE is set: fetch it on a machine that can reach the hub, or unset HF_HUB_OFFLINE", err)
		}
		return dir, err
	}
	client := p.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, ResponseHeaderTimeout: 60 * time.Second,
			TLSHandshakeTimeout: 30 * time.Second}}
	}
	commit, files, err := p.list(ctx, client, id)
	if err != nil {
		return "", err
	}
	var todo []repoFile
	var total int64
	for _, f := range files {
		if wanted(f.Name) {
			todo = append(todo, f)
			_, _, size := f.etag()
			total += size
		}
	}
	if !hasConfig(todo) {
		return "", &HubError{ID: id, What: "the repository has no config.json: it is not a transformers model keel can load"}
	}
	root := id.CacheFolder(p.Hub)
	snap := filepath.Join(root, "snapshots", commit)
	for _, d := range []string{filepath.Join(root, "blobs"), filepath.Join(root, "refs"), snap, filepath.Join(p.Hub, ".locks", filepath.Base(root))} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", fmt.Errorf("the Hugging Face cache: %w", err)
		}
	}
	var done atomic.Int64
	report := func(n int64) {
		v := done.Add(n)
		if p.Progress != nil {
			p.Progress(v, total)
		}
	}
	work := make(chan repoFile)
	errs := make(chan error, len(todo))
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range max(1, orDefault(p.Parallel, 4)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				if err := p.fetch(ctx, client, id, commit, root, snap, f, report); err != nil {
					errs <- err
					cancel()
				}
			}
		}()
	}
feed:
	for _, f := range todo {
		select {
		case work <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return "", err
	}
	if !commitHash.MatchString(id.Revision) {
		ref := filepath.Join(root, "refs", filepath.FromSlash(id.Revision))
		if err := os.MkdirAll(filepath.Dir(ref), 0o755); err != nil {
			return "", err
		}
		if err := atomicfile.WriteFile(ref, []byte(commit)); err != nil {
			return "", err
		}
	}
	return snap, nil
}

// orDefault is v, or def where v is not set (0 or less).
func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func hasConfig(files []repoFile) bool {
	for _, f := range files {
		if f.Name == "config.json" {
			return true
		}
	}
	return false
}

// list asks the hub for the revision's commit and files.
func (p *Puller) list(ctx context.Context, client *http.Client, id HubID) (string, []repoFile, error) {
	u := fmt.Sprintf("%s/api/models/%s/revision/%s?blobs=true", p.Endpoint, id.Repo, url.PathEscape(id.Revision))
	resp, err := p.get(ctx, client, u, 0)
	if err != nil {
		return "", nil, fmt.Errorf("%s: the hub %s: %w", id, p.Endpoint, err)
	}
	defer resp.Body.Close()
	if err := p.refusal(id, resp); err != nil {
		return "", nil, err
	}
	var info struct {
		SHA      string     `json:"sha"`
		Siblings []repoFile `json:"siblings"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&info); err != nil {
		return "", nil, fmt.Errorf("%s: the hub's file list: %v", id, err)
	}
	if !commitHash.MatchString(info.SHA) {
		return "", nil, fmt.Errorf("%s: the hub named commit %q, not a commit hash", id, info.SHA)
	}
	for _, f := range info.Siblings {
		name := f.Name
		if !wanted(name) {
			continue
		}
		etag, _, _ := f.etag()
		if !regexpHex(etag) || path.Clean(name) != name || strings.HasPrefix(name, ".") {
			return "", nil, fmt.Errorf("%s: the hub listed %q with id %q: not a file keel can cache", id, name, etag)
		}
	}
	return info.SHA, info.Siblings, nil
}

func regexpHex(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// refusal turns a hub refusal into one line naming why and what to do (nil for a success).
func (p *Puller) refusal(id HubID, resp *http.Response) error {
	if resp.StatusCode < 300 {
		return nil
	}
	code := resp.Header.Get("X-Error-Code")
	e := &HubError{ID: id, Status: resp.StatusCode, Code: code}
	token := "set HF_TOKEN (or `hf auth login`) to a token that may read it"
	if p.Token != "" {
		token = "the token in HF_TOKEN (or huggingface_hub's token file) may not read it: check its permissions"
	}
	switch {
	case code == "GatedRepo" || resp.StatusCode == http.StatusForbidden:
		e.What = fmt.Sprintf("a gated repository (%d): accept its terms at %s/%s, then %s", resp.StatusCode, p.Endpoint, id.Repo, token)
	case code == "RevisionNotFound":
		e.What = fmt.Sprintf("no revision %q (%d): name a branch, tag or commit the repository has", id.Revision, resp.StatusCode)
	case code == "EntryNotFound":
		e.What = fmt.Sprintf("a listed file is missing on the hub (%d): try again, or name another revision", resp.StatusCode)
	case resp.StatusCode == http.StatusUnauthorized || code == "RepoNotFound" || resp.StatusCode == http.StatusNotFound:
		e.What = fmt.Sprintf("no such repository, or a private one (%d): check the id, or %s", resp.StatusCode, token)
	default:
		e.What = fmt.Sprintf("the hub answered %s: try again later", resp.Status)
	}
	return e
}

func (p *Puller) get(ctx context.Context, client *http.Client, u string, from int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if p.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.Token)
	}
	if from > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(from, 10)+"-")
	}
	req.Header.Set("User-Agent", "keel")
	return client.Do(req)
}

// fetch puts one file's blob in the cache (unless it is there), checked against its id, and links it into the
// snapshot.
func (p *Puller) fetch(ctx context.Context, client *http.Client, id HubID, commit, root, snap string, f repoFile, report func(int64)) error {
	etag, newHash, size := f.etag()
	blob := filepath.Join(root, "blobs", etag)
	link := filepath.Join(snap, f.Name)
	if _, err := os.Stat(blob); err != nil {
		unlock, err := lockFile(filepath.Join(p.Hub, ".locks", filepath.Base(root), etag+".lock"))
		if err != nil {
			return fmt.Errorf("%s: %s: %w", id, f.Name, err)
		}
		err = p.download(ctx, client, id, commit, f.Name, blob, newHash, size, report)
		unlock()
		if err != nil {
			return err
		}
	} else {
		report(size)
	}
	target, err := filepath.Rel(filepath.Dir(link), blob)
	if err != nil {
		return err
	}
	if cur, err := os.Readlink(link); err == nil && cur == target {
		return nil
	}
	tmp := link + ".keel-link"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("%s: %s: %w", id, f.Name, err)
	}
	return os.Rename(tmp, link)
}

// download writes blob from the hub through blob.incomplete, resuming what an earlier try left there, and
// renames it into place once its hash is the one the hub named.
func (p *Puller) download(ctx context.Context, client *http.Client, id HubID, commit, name, blob string, newHash func() hash.Hash, size int64, report func(int64)) error {
	if _, err := os.Stat(blob); err == nil { // another process wrote it while this one waited for the lock
		report(size)
		return nil
	}
	part := blob + ".incomplete"
	u := fmt.Sprintf("%s/%s/resolve/%s/%s", p.Endpoint, id.Repo, commit, url.PathEscape(name))
	var last error
	for attempt := 0; attempt <= orDefault(p.Retries, 3); attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		have := int64(0)
		if st, err := os.Stat(part); err == nil {
			have = st.Size()
		}
		if have > size {
			os.Remove(part)
			have = 0
		}
		report(have)
		err := p.getInto(ctx, client, id, u, part, have, size, report)
		if err == nil {
			break
		}
		var he *HubError
		if errors.As(err, &he) {
			return err
		}
		last = fmt.Errorf("%s: %s: %w", id, name, err)
		st, _ := os.Stat(part)
		if st != nil {
			report(-st.Size()) // counted again when the next try resumes
		}
		if attempt == orDefault(p.Retries, 3) {
			return fmt.Errorf("%w (the part fetched is kept: run it again to resume)", last)
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	if err := checkHash(part, newHash, filepath.Base(blob)); err != nil {
		os.Remove(part)
		return fmt.Errorf("%s: %s: %w", id, name, err)
	}
	return os.Rename(part, blob)
}

// getInto appends the file's bytes from have on to part.
func (p *Puller) getInto(ctx context.Context, client *http.Client, id HubID, u, part string, have, size int64, report func(int64)) error {
	if have == size && size > 0 {
		return nil
	}
	resp, err := p.get(ctx, client, u, have)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := p.refusal(id, resp); err != nil {
		return err
	}
	flags := os.O_CREATE | os.O_WRONLY | os.O_APPEND
	if have > 0 && resp.StatusCode != http.StatusPartialContent { // the server sent the whole file again
		flags = os.O_CREATE | os.O_WRONLY | os.O_TRUNC
		report(-have)
	}
	f, err := os.OpenFile(part, flags, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.TeeReader(resp.Body, reporter(report)))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if st, _ := os.Stat(part); st != nil && st.Size() != size {
		return fmt.Errorf("the connection ended after %d bytes (%d of %d in all)", n, st.Size(), size)
	}
	return nil
}

type reporter func(int64)

func (r reporter) Write(p []byte) (int, error) { r(int64(len(p))); return len(p), nil }

// checkHash compares a file's hash with the id the hub gave it.
func checkHash(path string, newHash func() hash.Hash, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := newHash()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("the bytes fetched hash to %s, not the %s the hub named: the download is discarded (run it again)", got[:12], want[:12])
	}
	return nil
}

// lockFile holds an exclusive flock on path (created) until the returned function is called.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
