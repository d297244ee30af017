package models

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// The Hugging Face cache, as huggingface_hub lays it out (and transformers, vLLM and `hf download` share):
//
//	HUB/models--ORG--NAME/refs/REVISION       the commit hash a branch or tag points at (a text file)
//	HUB/models--ORG--NAME/snapshots/HASH/...  the repository's files at that commit, each a symlink into blobs/
//	HUB/models--ORG--NAME/blobs/ETAG          the contents, named by their hash
//
// keel reads it in place and never writes into a snapshot it did not download: one copy serves every tool.

// PersonaName is the embedded model's name wherever a model is taken (--model persona).
const PersonaName = "persona"

// HubCacheDir is the hub cache folder: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
func HubCacheDir() string {
	if d := os.Getenv("HF_HUB_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("HF_HOME"); d != "" {
		return filepath.Join(d, "hub")
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "huggingface", "hub")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "huggingface", "hub")
	}
	return filepath.Join(home, ".cache", "huggingface", "hub")
}

// HubID is a model repository named as every Hugging Face tool names it: ORG/NAME, at a revision (a branch, a
// tag or a commit hash; "main" when none is given).
type HubID struct {
	Repo     string // ORG/NAME
	Revision string
}

func (id HubID) String() string {
	if id.Revision == "main" {
		return id.Repo
	}
	return id.Repo + "@" + id.Revision
}

// CacheFolder is the repository's folder in the cache (models--ORG--NAME).
func (id HubID) CacheFolder(hub string) string {
	return filepath.Join(hub, "models--"+strings.ReplaceAll(id.Repo, "/", "--"))
}

var (
	repoPart   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$`)
	commitHash = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// ParseHubID reads ORG/NAME[@REVISION]; false when s is not one (a path, a bare name).
func ParseHubID(s string) (HubID, bool) {
	repo, rev, hasRev := strings.Cut(s, "@")
	org, name, ok := strings.Cut(repo, "/")
	if !ok || !repoPart.MatchString(org) || !repoPart.MatchString(name) || strings.Contains(name, "/") ||
		strings.Contains(repo, "..") || strings.HasSuffix(name, ".") {
		return HubID{}, false
	}
	if !hasRev {
		rev = "main"
	}
	if rev == "" || strings.ContainsAny(rev, `\`) || strings.Contains(rev, "..") || strings.HasPrefix(rev, "/") {
		return HubID{}, false
	}
	return HubID{Repo: repo, Revision: rev}, true
}

// ErrNotCached is CachedSnapshot's answer for a repository or revision the cache does not hold.
var ErrNotCached = errors.New("not in the Hugging Face cache")

// CachedSnapshot is the snapshot folder of id in the hub cache: refs/REVISION names its commit (a commit hash is
// its own name). It must hold config.json.
func CachedSnapshot(hub string, id HubID) (string, error) {
	root := id.CacheFolder(hub)
	commit := id.Revision
	if !commitHash.MatchString(commit) {
		raw, err := os.ReadFile(filepath.Join(root, "refs", filepath.FromSlash(id.Revision)))
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s: %w (%s)", id, ErrNotCached, hub)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", id, err)
		}
		commit = strings.TrimSpace(string(raw))
		if !commitHash.MatchString(commit) {
			return "", fmt.Errorf("%s: %s holds %q, not a commit hash: the cache is damaged (delete %s and fetch it again)", id, filepath.Join(root, "refs", id.Revision), commit, root)
		}
	}
	dir := filepath.Join(root, "snapshots", commit)
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s: %w: snapshot %s has no config.json", id, ErrNotCached, commit[:12])
		}
		return "", fmt.Errorf("%s: %w", id, err)
	}
	return dir, nil
}

// CachedModel is one repository the hub cache holds: its id, the snapshot main (or the newest) points at, and
// the bytes its blobs take.
type CachedModel struct {
	ID       HubID
	Snapshot string // "" when no snapshot holds a config.json
	Bytes    int64
}

// ListCache lists the model repositories in the hub cache, in name order.
func ListCache(hub string) ([]CachedModel, error) {
	entries, err := os.ReadDir(hub)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []CachedModel
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "models--")
		if !e.IsDir() || !ok {
			continue
		}
		org, name, ok := strings.Cut(rest, "--")
		if !ok {
			continue
		}
		m := CachedModel{ID: HubID{Repo: org + "/" + name, Revision: "main"}}
		if dir, err := CachedSnapshot(hub, m.ID); err == nil {
			m.Snapshot = dir
		} else if snaps, _ := filepath.Glob(filepath.Join(hub, e.Name(), "snapshots", "*", "config.json")); len(snaps) > 0 {
			m.Snapshot = filepath.Dir(snaps[len(snaps)-1])
			m.ID.Revision = filepath.Base(m.Snapshot)
		}
		filepath.WalkDir(filepath.Join(hub, e.Name(), "blobs"), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if info, err := d.Info(); err == nil {
					m.Bytes += info.Size()
				}
			}
			return nil
		})
		out = append(out, m)
	}
	return out, nil
}

// Resolve turns what a user gave as --model into a model folder: "" or "persona" is the embedded model
// (unpacked under keelCache), an existing folder is itself, and ORG/NAME[@REVISION] is its snapshot in the hub
// cache (HubCacheDir), fetched by the Puller pull makes when the cache does not hold it (nil: never fetched;
// it is made only for an id, so a folder or persona reads no hub settings).
func Resolve(ref, keelCache string, pull func() *Puller) (string, error) {
	if ref == "" || ref == PersonaName {
		return Persona(keelCache)
	}
	if st, err := os.Stat(ref); err == nil && st.IsDir() {
		return ref, nil
	}
	id, ok := ParseHubID(ref)
	if !ok {
		return "", fmt.Errorf("--model %s: no such folder (a Hugging Face model folder holds config.json, *.safetensors and the tokenizer), and not a Hugging Face id ORG/NAME[@REVISION] or %q", ref, PersonaName)
	}
	if pull == nil {
		dir, err := CachedSnapshot(HubCacheDir(), id)
		if errors.Is(err, ErrNotCached) {
			return "", fmt.Errorf("%w: fetch it with `keel pull %s`, or give a model folder", err, id)
		}
		return dir, err
	}
	p := pull()
	dir, err := CachedSnapshot(p.Hub, id)
	if errors.Is(err, ErrNotCached) {
		return p.Pull(context.Background(), id)
	}
	return dir, err
}
