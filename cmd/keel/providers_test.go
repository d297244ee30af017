package main

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keel-lab/keel/engine/torch/torchtest"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/provider"
	"github.com/keel-lab/keel/steer"
)

// serverRequests reads keel serve's count of requests its scheduler took.
func serverRequests(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^keel_requests_total (\d+)$`).FindSubmatch(raw)
	if m == nil {
		t.Fatalf("no keel_requests_total in:\n%s", raw)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// The paper's pipeline with generation on a server: the extraction's rollouts come from the server and its
// activations from keel's own teacher forcing, and the axis agrees with the one extracted in-process; `keel drift
// --user` holds its conversations with the server's model playing the user. Against keel serve (which needs a
// bearer key here) also: a kill -9 mid-run resumes without asking the server again what it answered, a judge on
// the server that answers prose is counted and named, never scored, and a wrong key is one line. Against ollama,
// built with its own copy of llama.cpp, serving keel's GGUF export of the model: the same agreement.
func TestAxisExtractAndDriftThroughAServer(t *testing.T) {
	torchtest.Runtime(t)
	dir := t.TempDir()
	size := []string{"--limit", "8", "--questions", "3", "--min-count", "1", "--threads", "1", "--concurrency", "4"}
	inProcess := filepath.Join(dir, "in-process")
	if code, _, stderr := runKeel(append([]string{"axis", "extract", "--out", inProcess}, size...)...); code != 0 {
		t.Fatalf("in-process extraction: %s", stderr)
	}

	t.Run("keel serve", func(t *testing.T) {
		keyFile := filepath.Join(dir, "keys")
		os.WriteFile(keyFile, []byte("sk-keel-test-0123456789\n"), 0o600)
		env := []string{"XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "XDG_CACHE_HOME=" + filepath.Join(dir, "cache")}
		_, addrs := startServe(t, env, "--threads", "1", "--http", "127.0.0.1:0", "--api-keys", keyFile, "--name", "persona")
		server := "http://" + addrs["http"] + "/v1#persona"
		t.Setenv("KEEL_PROVIDER_KEY_FILE", keyFile)

		// Through the server, killed (-9) once it has some answers, then resumed.
		viaServer := filepath.Join(dir, "via-server")
		answers := filepath.Join(viaServer, "provider-answers.jsonl")
		child := exec.Command(os.Args[0], append([]string{"axis", "extract", "--rollouts", server, "--out", viaServer}, size...)...)
		child.Env = append(os.Environ(), "KEEL_TEST_MAIN=1")
		var childErr strings.Builder
		child.Stderr = &childErr
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- child.Wait() }()
		for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
			raw, _ := os.ReadFile(answers)
			if strings.Count(string(raw), "\n") >= 25 {
				break
			}
			select {
			case err := <-exited:
				t.Fatalf("the extraction ended (%v) before it could be killed: %s", err, childErr.String())
			default:
			}
			if time.Since(start) > 2*time.Minute {
				child.Process.Kill()
				t.Fatalf("the extraction got no answers from the server: %s %s", raw, childErr.String())
			}
		}
		child.Process.Kill()
		<-exited
		cache, err := provider.OpenCache(answers)
		if err != nil {
			t.Fatal(err)
		}
		kept := cache.Len()
		cache.Close()
		before := serverRequests(t, addrs["http"])
		code, stdout, stderr := runKeel(append([]string{"axis", "extract", "--rollouts", server, "--out", viaServer}, size...)...)
		if code != 0 {
			t.Fatalf("resumed extraction: %s", stderr)
		}
		cache, _ = provider.OpenCache(answers)
		all := cache.Len()
		cache.Close()
		if asked := serverRequests(t, addrs["http"]) - before; asked != all-kept || kept < 25 || !strings.Contains(stdout, "teacher forcing: ") {
			t.Fatalf("the resumed run asked the server %d times; %d answers were kept from the killed run, %d in all:\n%s", asked, kept, all, stdout)
		}

		agrees(t, inProcess, viaServer)
		// The embedded model is no judge: its prose answers are counted and named, and no rollout is scored.
		code, _, stderr = runKeel("axis", "extract", "--rollouts", server, "--judge", server, "--limit", "2", "--questions", "1", "--out", filepath.Join(dir, "judged"), "--threads", "1")
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if last := lines[len(lines)-1]; code == 0 || !strings.HasPrefix(last, "keel axis extract: ") || !strings.Contains(last, "held no score 0-3 in 10 of 10") {
			t.Fatalf("a judge answering prose: exit %d, %s", code, stderr)
		}

		// A wrong key is one line naming the fix, and nothing already cached is lost.
		t.Setenv("KEEL_PROVIDER_KEY", "sk-wrong")
		code, _, stderr = runKeel(append([]string{"axis", "extract", "--rollouts", server, "--out", filepath.Join(dir, "wrong-key")}, size...)...)
		if code == 0 || !strings.Contains(stderr, "refused the key (401") || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Fatalf("a wrong key: exit %d, %q", code, stderr)
		}
		os.Unsetenv("KEEL_PROVIDER_KEY")

		// Drift conversations with the server's model as the user.
		code, stdout, stderr = runKeel("drift", "--axis", filepath.Join(inProcess, probes.AxisFile), "--user", server, "--work", filepath.Join(dir, "drift"),
			"--domains", "therapy", "--conversations", "3", "--turns", "2", "--min-conversations", "1", "--threads", "1", "--json")
		if code != 0 {
			t.Fatalf("drift --user: %s", stderr)
		}
		var curves []map[string]any
		if err := json.Unmarshal([]byte(stdout), &curves); err != nil || len(curves) != 1 || curves[0]["domain"] != "therapy" {
			t.Fatalf("drift --user: %v %s", err, stdout)
		}
		cache, _ = provider.OpenCache(filepath.Join(dir, "drift", "provider-answers.jsonl"))
		if cache.Len() != 6 {
			t.Fatalf("drift --user asked the server for %d user turns, want 3 conversations x 2 turns", cache.Len())
		}
		cache.Close()
	})
	t.Run("ollama", func(t *testing.T) {
		server := startOllama(t, dir)
		viaOllama := filepath.Join(dir, "via-ollama")
		code, stdout, stderr := runKeel(append([]string{"axis", "extract", "--rollouts", server, "--out", viaOllama}, size...)...)
		if code != 0 {
			t.Fatalf("extraction through ollama: %s", stderr)
		}
		t.Log(strings.TrimSpace(stdout[strings.Index(stdout, "teacher forcing"):]))
		agrees(t, inProcess, viaOllama)
		code, _, stderr = runKeel("drift", "--axis", filepath.Join(inProcess, probes.AxisFile), "--user", server, "--work", filepath.Join(dir, "drift-ollama"),
			"--domains", "philosophy", "--conversations", "2", "--turns", "2", "--min-conversations", "1", "--threads", "1")
		if code != 0 {
			t.Fatalf("drift --user through ollama: %s", stderr)
		}
	})
}

// agrees checks an extraction through a server against the in-process one: the axes' cosine at the middle layer
// (>= 0.9) and the server extraction's PC1 cosine there (>= 0.6).
func agrees(t *testing.T, inProcess, viaServer string) {
	t.Helper()
	a, err := steer.LoadVectorFile(filepath.Join(inProcess, probes.AxisFile))
	if err != nil {
		t.Fatal(err)
	}
	b, err := steer.LoadVectorFile(filepath.Join(viaServer, probes.AxisFile))
	if err != nil {
		t.Fatal(err)
	}
	mid := a.NLayers / 2
	var dot, na, nb float64
	for i := range a.Layers[mid] {
		x, y := float64(a.Layers[mid][i]), float64(b.Layers[mid][i])
		dot, na, nb = dot+x*y, na+x*x, nb+y*y
	}
	cos := dot / math.Sqrt(na*nb)
	var rep probes.AxisResult
	raw, _ := os.ReadFile(filepath.Join(viaServer, "report.json"))
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("axis via the server vs in-process at layer %d: cosine %.3f; PC1 cosine %.3f", mid, cos, rep.PC1AxisCosine[mid])
	if cos < 0.9 || rep.PC1AxisCosine[mid] < 0.6 {
		t.Fatalf("axis via the server: cosine with the in-process axis %.3f (want >= 0.9), PC1 cosine %.3f (want >= 0.6)", cos, rep.PC1AxisCosine[mid])
	}

}
