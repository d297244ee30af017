package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// chatML is the embedded model's chat template in ollama's template language.
const chatML = `{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
`

// startOllama serves keel's f32 GGUF export of the embedded model with ollama (built from the Go module proxy
// with its own copy of llama.cpp: .ci/run builds it), checks its greedy answer to "Who are you?" against keel's
// own, and returns the server as URL#MODEL. The server is stopped when the test ends.
func startOllama(t *testing.T, dir string) string {
	t.Helper()
	bin := os.Getenv("KEEL_OLLAMA")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("ollama"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("ollama is not installed: .ci/run builds it (CGO_ENABLED=1 go install github.com/ollama/ollama@v0.6.5)")
			}
			t.Skip("ollama is not installed (CGO_ENABLED=1 go install github.com/ollama/ollama@v0.6.5, or KEEL_OLLAMA=PATH)")
		}
	}
	gguf := filepath.Join(dir, "persona.gguf")
	if code, _, stderr := runKeel("export", "gguf", "--out", gguf); code != 0 {
		t.Fatalf("keel export gguf: %s", stderr)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := ln.Addr().String()
	ln.Close()
	home := filepath.Join(dir, "ollama")
	env := append(os.Environ(), "OLLAMA_HOST="+host, "OLLAMA_MODELS="+filepath.Join(home, "models"), "HOME="+home, "OLLAMA_NUM_PARALLEL=4")
	var log strings.Builder
	serve := exec.Command(bin, "serve")
	serve.Env, serve.Stdout, serve.Stderr = env, &log, &log
	serve.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its model runners go with it
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-serve.Process.Pid, syscall.SIGKILL); serve.Wait() })
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + host + "/"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("ollama serve did not answer: %s", log.String())
		}
	}
	modelfile := filepath.Join(dir, "Modelfile")
	os.WriteFile(modelfile, []byte(fmt.Sprintf("FROM %s\nTEMPLATE \"\"\"%s\"\"\"\nPARAMETER stop <|im_end|>\nPARAMETER repeat_penalty 1\nPARAMETER top_k 0\n", gguf, chatML)), 0o644)
	create := exec.Command(bin, "create", "persona", "-f", modelfile)
	create.Env = env
	if out, err := create.CombinedOutput(); err != nil {
		t.Fatalf("ollama create: %v %s\n%s", err, out, log.String())
	}
	body := `{"model": "persona", "temperature": 0, "max_tokens": 24, "messages": [{"role": "user", "content": "Who are you?"}]}`
	resp, err := http.Post("http://"+host+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var answer struct {
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(raw, &answer); err != nil || len(answer.Choices) == 0 {
		t.Fatalf("ollama's answer: %v %s\n%s", err, raw, log.String())
	}
	code, want, stderr := runKeel("generate", "--chat", "--prompt", "Who are you?", "--max-tokens", "24", "--temperature", "0")
	if code != 0 {
		t.Fatalf("keel generate: %s", stderr)
	}
	got := answer.Choices[0].Message.Content
	t.Logf("ollama at temperature 0: %q; keel: %q", got, want)
	// Greedy on both sides (ollama's repeat penalty is off in the Modelfile): the same reply.
	if !strings.Contains(got, "I am an AI assistant, here to answer questions") || strings.TrimSpace(got) != strings.TrimSpace(want) {
		t.Fatalf("ollama serving keel's GGUF answers %q; keel answers %q", got, want)
	}
	return "http://" + host + "/v1#persona"
}
