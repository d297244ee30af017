package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/provider"
)

// providerFlags are how a command asks OpenAI-compatible servers (the endpoints themselves are the command's
// own flags; the key is never a flag).
type providerFlags struct {
	concurrency int
	timeout     time.Duration
	retries     int
	caches      map[string]*provider.Cache // by path: clients of one work folder share its cache
}

func (f *providerFlags) register(fs interface {
	IntVar(*int, string, int, string)
	DurationVar(*time.Duration, string, time.Duration, string)
}) {
	fs.IntVar(&f.concurrency, "concurrency", 8, "requests in flight to each server at most")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Minute, "one request's limit before it is tried again")
	fs.IntVar(&f.retries, "retries", 4, "tries again after a 429, a 5xx, a timeout or a torn answer")
}

// cache is the answers cache of a work folder, opened once however many clients share it.
func (f *providerFlags) cache(dir string) (*provider.Cache, error) {
	path := filepath.Join(dir, "provider-answers.jsonl")
	if c, ok := f.caches[path]; ok {
		return c, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c, err := provider.OpenCache(path)
	if err != nil {
		return nil, err
	}
	if f.caches == nil {
		f.caches = map[string]*provider.Cache{}
	}
	f.caches[path] = c
	return c, nil
}

// close closes the caches the command opened.
func (f *providerFlags) close() {
	for _, c := range f.caches {
		c.Close()
	}
}

// client is the server ref names (URL#MODEL), its answers cached in the work folder dir.
func (f *providerFlags) client(ref, dir string) (*provider.Client, error) {
	e, err := provider.ParseEndpoint(ref)
	if err != nil {
		return nil, cli.UsageError{Err: err}
	}
	key, err := provider.KeyFromEnv(os.Getenv)
	if err != nil {
		return nil, cli.UsageError{Err: err}
	}
	if f.concurrency < 1 || f.retries < 0 || f.timeout <= 0 {
		return nil, cli.Usagef("--concurrency and --timeout must be positive, --retries at least 0")
	}
	retries := f.retries
	if retries == 0 {
		retries = -1 // the client's "no retries"
	}
	cache, err := f.cache(dir)
	if err != nil {
		return nil, err
	}
	return &provider.Client{Endpoint: e, Key: key, Concurrency: f.concurrency, Timeout: f.timeout, Retries: retries, Cache: cache}, nil
}

// users is the simulated user on the server ref names (URL#MODEL), its answers cached in work (default: keel's
// cache folder); nil (the scripted turns) when ref is "".
func (f *providerFlags) users(ref, work string, maxTokens int, temperature float64, seed uint64) (probes.Users, error) {
	if ref == "" {
		return nil, nil
	}
	if work == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			cache = os.TempDir()
		}
		work = filepath.Join(cache, "keel", "provider")
	}
	client, err := f.client(ref, work)
	if err != nil {
		return nil, err
	}
	return &probes.SimulatedUsers{Client: client, MaxTokens: maxTokens, Temperature: temperature, Seed: seed}, nil
}

// clients gives an extraction the servers its config names, answers cached in its folder, and a progress
// line that reports the requests' rate.
func (f *providerFlags) clients(x *probes.Extractor) error {
	var err error
	if x.Config.Rollouts != "" {
		if x.Rollouts, err = f.client(x.Config.Rollouts, x.Dir); err != nil {
			return err
		}
	}
	if _, perr := provider.ParseEndpoint(x.Config.Judge); perr == nil {
		if x.Judge, err = f.client(x.Config.Judge, x.Dir); err != nil {
			return err
		}
	}
	if x.Rollouts == nil && x.Judge == nil {
		return nil
	}
	began, bar := time.Now(), x.Progress
	x.Progress = func(done, total int, role string, eta time.Duration) {
		var sent int64
		for _, c := range []*provider.Client{x.Rollouts, x.Judge} {
			if c != nil {
				sent += c.Stats().Sent
			}
		}
		if bar != nil {
			bar(done, total, fmt.Sprintf("%s (%.1f req/s)", role, float64(sent)/time.Since(began).Seconds()), eta)
		}
	}
	return nil
}

// printExtractStats reports what the run did besides the axis: teacher forcing's throughput, the servers'
// requests, the judge's unreadable answers.
func printExtractStats(w io.Writer, x *probes.Extractor) {
	st := x.Stats
	if st.ForcedRollouts > 0 {
		fmt.Fprintf(w, "teacher forcing: %d rollouts, %d tokens in %.1fs (%.1f rollouts/s, %.0f tokens/s, batch %d)\n",
			st.ForcedRollouts, st.ForcedTokens, st.ForcedSeconds, float64(st.ForcedRollouts)/max(st.ForcedSeconds, 1e-9), float64(st.ForcedTokens)/max(st.ForcedSeconds, 1e-9), st.Batch)
	}
	for i, c := range []*provider.Client{x.Rollouts, x.Judge} {
		name := []string{"rollouts", "judge"}[i]
		if c != nil {
			s := c.Stats()
			fmt.Fprintf(w, "%s from %s: %d requests sent (%d retries), %d answers from the folder's cache\n", name, c.Endpoint, s.Sent, s.Retried, s.CacheHits)
		}
	}
	if st.Judged > 0 {
		fmt.Fprintf(w, "judge: %d answers, %d held no score 0-3 (their rollouts count toward no role vector)\n", st.Judged, st.Unparsed)
	}
}
