package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/serve"
)

// keel serve answers a request with keel's extension exactly as `keel generate --chat` answers the same
// interventions given as flags.
func TestServeAnswersAsGenerate(t *testing.T) {
	rt := torchtest.Runtime(t)
	cache := filepath.Join(t.TempDir(), "cache")
	t.Setenv("XDG_CACHE_HOME", cache)
	dir, err := models.Persona(filepath.Join(cache, "keel", "models"))
	if err != nil {
		t.Fatal(err)
	}
	lm, err := model.Load(rt, dir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	axisDir := filepath.Join(lm.Dir, "axis")
	axis, _, err := probes.OpenAxisFolderFor(axisDir, lm, false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sched := serve.NewScheduler(lm, axis, 8, 16)
	go sched.Run(ctx)
	ts := httptest.NewServer((&serve.API{Sched: sched, Name: "persona", Limits: serve.DefaultLimits()}).Handler())
	defer ts.Close()
	capID := axis.CapIDs()[1]
	for _, c := range []struct {
		keel  string
		flags []string
	}{
		{`{}`, nil},
		{`{"cap": "on"}`, []string{"--cap", "on"}},
		{`{"cap": "` + capID + `"}`, []string{"--cap", capID}},
		{`{"steer": {"c": -3}}`, []string{"--steer", "-3"}},
		{`{"steer": {"c": -3}, "cap": "on"}`, []string{"--steer", "-3", "--cap", "on"}},
		{`{"steer": {"c": 2, "layer": 1}, "cap": "on"}`, []string{"--steer", "2", "--steer-layer", "1", "--cap", "on"}},
	} {
		body := `{"model": "persona", "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": "Who are you?"}], "keel": ` + c.keel + `}`
		resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Choices []struct{ Message struct{ Content string } }
		}
		json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if len(out.Choices) != 1 {
			t.Fatalf("%s: status %d", c.keel, resp.StatusCode)
		}
		code, stdout, stderr := runKeel(append([]string{"generate", "--chat", "--prompt", "Who are you?", "--max-tokens", "24", "--threads", "2"}, c.flags...)...)
		if code != 0 {
			t.Fatalf("generate %v: %s", c.flags, stderr)
		}
		got, want := out.Choices[0].Message.Content, strings.TrimSuffix(stdout, "\n")
		t.Logf("%s: %q", c.keel, got)
		if got != want {
			t.Errorf("%s: serve %q, generate %q", c.keel, got, want)
		}
	}
}

// keel serve refuses, in one line, to listen beyond loopback without keys, an address that is not one, and a key
// file it cannot use.
func TestServeRefusesUnsafeOrBadSettings(t *testing.T) {
	torchtest.Runtime(t)
	t.Setenv("XDG_CACHE_HOME", filepath.Join(t.TempDir(), "cache"))
	empty := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(empty, []byte("# no keys yet\n"), 0o600)
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	for _, args := range [][]string{
		{"serve", "--http", "0.0.0.0:0"},
		{"serve", "--http", "8080"},
		{"serve", "--api-keys", filepath.Join(t.TempDir(), "missing")},
		{"serve", "--api-keys", empty},
		{"serve", "--api-keys", short},
		{"serve", "--max-batch", "0"},
	} {
		code, _, stderr := runKeel(args...)
		if code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, %q", args, code, stderr)
		}
		t.Logf("%v: %s", args, strings.TrimSpace(stderr))
	}
}
