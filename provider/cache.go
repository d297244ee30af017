package provider

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sync"
)

// Cache keeps every answer a provider gave, one JSON line each, in a file of the run's work folder: a run
// killed at any point resumes without asking again what was answered. Each answer is one write to a file opened
// for appending, so a killed process loses at most the answer it was writing (a torn last line, skipped).
type Cache struct {
	path    string
	mu      sync.Mutex
	f       *os.File
	answers map[string]Reply
	Torn    int // lines skipped when the file was opened
}

type cacheLine struct {
	Key string `json:"key"`
	Reply
}

// OpenCache opens (or starts) a cache file.
func OpenCache(path string) (*Cache, error) {
	c := &Cache{path: path, answers: map[string]Reply{}}
	raw, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("provider cache: %w", err)
	}
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var l cacheLine
		if json.Unmarshal(line, &l) != nil || l.Key == "" {
			c.Torn++ // a line a killed run left half written: its request is asked again
			continue
		}
		c.answers[l.Key] = l.Reply
	}
	if c.f, err = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		return nil, fmt.Errorf("provider cache: %w", err)
	}
	// A torn line ends without a newline: start the next answer on a line of its own.
	if len(raw) > 0 && raw[len(raw)-1] != '\n' {
		c.f.Write([]byte("\n"))
	}
	return c, nil
}

// Len is the number of answers cached.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.answers)
}

// Close closes the file.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	return c.f.Close()
}

// key names a request to one server: its URL and the whole body (model, messages, sampling, seed).
func (c *Cache) key(base string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(base))
	h.Write([]byte{0})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

func (c *Cache) get(key string) (Reply, bool) {
	if c == nil {
		return Reply{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.answers[key]
	return r, ok
}

func (c *Cache) put(key string, r Reply) error {
	if c == nil {
		return nil
	}
	line, err := json.Marshal(cacheLine{Key: key, Reply: r})
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("provider cache %s: %w", c.path, err)
	}
	c.answers[key] = r
	return nil
}
