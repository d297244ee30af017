package bench

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/charmbracelet/x/ansi"
	gossh "golang.org/x/crypto/ssh"

	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/sessions"
)

// runBenchHostile: keel bench hostile [--rounds 5] [--clients 32] [--json]: a real keel serve on loopback under
// API clients streaming at once (half of them leaving mid-reply), each round twice: alone, and beside one hostile
// SSH user who exercises every quota at once. The figures: the API's time to first token with the hostile user
// against without (same round, same load), the server's resident memory after the last round against after the
// first, and the recordings still valid after a kill -9.
func runBenchHostile(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	rounds := fs.Int("rounds", 5, "rounds, each with and without the hostile user")
	clients := fs.Int("clients", 32, "API clients streaming at once; every second one disconnects after its first token")
	requests := fs.Int("requests", 3, "requests each client sends, one after another")
	maxTokens := fs.Int("max-tokens", 32, "tokens per request")
	threads := fs.Int("threads", 2, "the server's libtorch threads")
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *rounds < 1 || *clients < 1 || *requests < 1 || *maxTokens < 1 {
		return cli.Usagef("--rounds, --clients, --requests and --max-tokens must be positive")
	}
	work, err := os.MkdirTemp("", "keel-bench-hostile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	srv, err := startBenchServer(work, *threads, stderr)
	if err != nil {
		return err
	}
	defer srv.kill()
	url := "http://" + srv.http + "/v1/chat/completions"
	load := func() ([]float64, error) {
		var mu sync.Mutex
		var ttfts []float64
		var firstErr error
		var wg sync.WaitGroup
		for c := 0; c < *clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := 0; r < *requests; r++ {
					body, _ := json.Marshal(map[string]any{"model": "bench", "stream": true, "max_tokens": *maxTokens, "temperature": 0.7, "seed": c*1000 + r,
						"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("Tell me about yourself, %d.", r)}}})
					sent := time.Now()
					first, err := streamFirst(url, body, c%2 == 1)
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if err == nil {
						ttfts = append(ttfts, first.Sub(sent).Seconds()*1000)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return ttfts, firstErr
	}
	var calm, rough []float64
	var rss []float64
	refusals := map[string]bool{}
	for round := 0; round < *rounds; round++ {
		alone, err := load()
		if err != nil {
			return fmt.Errorf("round %d without the hostile user: %w", round+1, err)
		}
		stop := make(chan struct{})
		done := make(chan map[string]bool)
		go func() { done <- srv.hostile(stop) }()
		time.Sleep(500 * time.Millisecond) // the hostile user is in before the load starts
		beside, err := load()
		close(stop)
		for k := range <-done {
			refusals[k] = true
		}
		if err != nil {
			return fmt.Errorf("round %d beside the hostile user: %w", round+1, err)
		}
		calm, rough = append(calm, alone...), append(rough, beside...)
		time.Sleep(time.Second) // the hostile user's chats close
		rss = append(rss, float64(srv.rssKiB())/1024)
		fmt.Fprintf(stderr, "round %d: time to first token p50 %.1f ms alone, %.1f ms beside the hostile user; RSS %.0f MiB\n",
			round+1, percentile(alone, 0.5), percentile(beside, 0.5), rss[len(rss)-1])
	}
	fmt.Fprintf(stderr, "the hostile user was refused: %s\n", strings.Join(sortedKeys(refusals), "; "))
	// kill -9: every recording stays valid.
	srv.kill()
	files, _ := filepath.Glob(filepath.Join(srv.state, "users", "*", "sessions", "*.jsonl"))
	valid := 0
	for _, f := range files {
		if _, err := sessions.Load(f); err == nil {
			valid++
		} else {
			fmt.Fprintf(stderr, "%s: %v\n", f, err)
		}
	}
	figs := map[string]figure{
		"hostile_ttft_p50":            ratio(percentile(rough, 0.5), percentile(calm, 0.5), "ms"),
		"hostile_ttft_p99":            ratio(percentile(rough, 0.99), percentile(calm, 0.99), "ms"),
		"server_rss_last_vs_first":    ratio(rss[len(rss)-1], rss[0], "MiB"),
		"recordings_valid_after_kill": ratio(float64(valid), float64(len(files)), "files"),
	}
	order := []string{"hostile_ttft_p50", "hostile_ttft_p99", "server_rss_last_vs_first", "recordings_valid_after_kill"}
	notes := map[string]string{"reference": fmt.Sprintf("ttft: the same load without the hostile user in the same round (%d clients x %d requests of %d tokens, half leaving after their first token, %d rounds); rss: after the first round; recordings: all of them", *clients, *requests, *maxTokens, *rounds)}
	return printFigures(stdout, figs, order, *asJSON, notes)
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// streamFirst sends one streamed request and returns when its first token arrived; leave ends the request there
// (a client that goes away mid-reply), else it reads to the end.
func streamFirst(url string, body []byte, leave bool) (time.Time, error) {
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return time.Time{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		raw, _ := io.ReadAll(resp.Body)
		return time.Time{}, fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	var first time.Time
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" || !first.IsZero() {
			continue
		}
		var chunk struct {
			Choices []struct{ Delta struct{ Content string } }
		}
		// The first chunk names the role only: the first token is the first chunk with content.
		if json.Unmarshal([]byte(line), &chunk) == nil && len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
			first = time.Now()
			if leave {
				return first, nil
			}
		}
	}
	if first.IsZero() {
		return first, fmt.Errorf("no token came")
	}
	return first, sc.Err()
}

// benchServer is a keel serve child process with one SSH user, "hostile".
type benchServer struct {
	cmd         *exec.Cmd
	http, ssh   string
	state       string
	signer      gossh.Signer
	killed      bool
	promptsPath string
}

func startBenchServer(work string, threads int, stderr io.Writer) (*benchServer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	keys := filepath.Join(work, "authorized_keys")
	if err := os.WriteFile(keys, append(bytes.TrimSpace(gossh.MarshalAuthorizedKey(signer.PublicKey())), []byte(" hostile\n")...), 0o600); err != nil {
		return nil, err
	}
	state := filepath.Join(work, "state")
	space := filepath.Join(state, "users", "hostile")
	if err := os.MkdirAll(space, 0o700); err != nil {
		return nil, err
	}
	// What a user may have left in their folder: a FIFO, a file over the read bound, prompts for a job.
	syscall.Mkfifo(filepath.Join(space, "fifo"), 0o600)
	os.WriteFile(filepath.Join(space, "big.jsonl"), bytes.Repeat([]byte("x"), 2<<20), 0o600)
	os.WriteFile(filepath.Join(space, "p.jsonl"), []byte(`{"messages":[{"role":"user","content":"Hi"}]}`+"\n"), 0o600)
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "serve", "--http", "127.0.0.1:0", "--ssh", "127.0.0.1:0", "--authorized-keys", keys, "--state", state,
		"--threads", strconv.Itoa(threads), "--name", "bench", "--max-batch", "32", "--queue", "256", "--streams-per-key", "64", "--ssh-max-read", "1048576")
	cmd.Env = append(os.Environ(), "KEEL_TEST_MAIN=1", "XDG_DATA_HOME="+work, "XDG_CONFIG_HOME="+work)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &benchServer{cmd: cmd, state: state, signer: signer}
	addrs := ServeAddrs(bufio.NewScanner(out), 2)
	if len(addrs) < 2 {
		s.kill()
		return nil, fmt.Errorf("keel serve did not start")
	}
	host, port, _ := strings.Cut(addrs["ssh"], " ")
	s.http, s.ssh = addrs["http"], net.JoinHostPort(host, port)
	go io.Copy(io.Discard, out)
	return s, nil
}

// ServeAddrs reads keel serve's start-up lines until it has printed want addresses: "http" (HOST:PORT) and
// "ssh" (HOST PORT, as an ssh command line takes them).
func ServeAddrs(lines *bufio.Scanner, want int) map[string]string {
	httpLine, sshLine := regexp.MustCompile(`on http://(\S+)/v1`), regexp.MustCompile(`on ssh -p (\d+) (\S+)`)
	addrs := map[string]string{}
	for len(addrs) < want && lines.Scan() {
		if m := httpLine.FindStringSubmatch(lines.Text()); m != nil {
			addrs["http"] = m[1]
		}
		if m := sshLine.FindStringSubmatch(lines.Text()); m != nil {
			addrs["ssh"] = m[2] + " " + m[1]
		}
	}
	return addrs
}

func (s *benchServer) kill() {
	if !s.killed {
		s.killed = true
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

func (s *benchServer) rssKiB() int { return ProcRSSKiB(s.cmd.Process.Pid) }

// ProcRSSKiB is a process's resident memory as /proc reports it.
func ProcRSSKiB(pid int) int {
	raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}

// Chat is one SSH session of the hostile user.
type Chat struct {
	Sess *gossh.Session // the session: Wait for its end, Close to end it
	In   io.WriteCloser // the keys typed
	mu   sync.Mutex
	out  bytes.Buffer // everything printed
}

func (c *Chat) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

// Text is everything the session printed, escape sequences removed.
func (c *Chat) Text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return ansi.Strip(c.out.String())
}

// Saw reports whether the session printed what within d (looking at least once).
func (c *Chat) Saw(what string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if strings.Contains(c.Text(), what) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *benchServer) chat(client *gossh.Client, cols, rows int) (*Chat, error) {
	return OpenChat(client, cols, rows)
}

// OpenChat opens a session on a connection with a pty of cols x rows and a shell (the workbench), its output
// gathered.
func OpenChat(client *gossh.Client, cols, rows int) (*Chat, error) {
	sess, err := client.NewSession()
	if err != nil {
		return nil, err
	}
	c := &Chat{Sess: sess}
	sess.Stdout, sess.Stderr = c, c
	if c.In, err = sess.StdinPipe(); err != nil {
		return nil, err
	}
	if err := sess.RequestPty("xterm-256color", rows, cols, gossh.TerminalModes{}); err != nil {
		return nil, err
	}
	return c, sess.Shell()
}

// hostile runs one SSH user at every quota at once until stop: a 100000x100000 pty and a flood of resizes, a
// huge max-tokens, paths out of its folder, a FIFO and a file over the read bound, a reward program, 40 KB typed,
// replies in every chat the bounds allow and more chats than they allow, on one connection and on several, and
// a flood of connections that never log in. It returns the refusals it saw.
func (s *benchServer) hostile(stop chan struct{}) map[string]bool {
	seen := map[string]bool{}
	cfg := &gossh.ClientConfig{User: "hostile", Auth: []gossh.AuthMethod{gossh.PublicKeys(s.signer)}, HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 20 * time.Second}
	var clients []*gossh.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	var chats []*Chat
	for conn := 0; conn < 3; conn++ {
		client, err := gossh.Dial("tcp", s.ssh, cfg)
		if err != nil {
			seen["login: "+err.Error()] = true
			continue
		}
		clients = append(clients, client)
		for n := 0; n < 3; n++ {
			c, err := s.chat(client, 100000, 100000)
			if err != nil {
				continue
			}
			if c.Saw("chats are open on this connection", 300*time.Millisecond) {
				seen["chats per connection"] = true
				continue
			}
			if c.Saw("chats open (the bound per user", 100*time.Millisecond) {
				seen["chats per user"] = true
				continue
			}
			chats = append(chats, c)
		}
	}
	var flood []net.Conn // connections that never log in, once the user's own are in
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", s.ssh); err == nil {
			flood = append(flood, c)
		}
	}
	for i, c := range chats {
		if !c.Saw("Assistant Axis", 30*time.Second) {
			continue
		}
		c.Sess.WindowChange(100000, 100000)
		for _, probe := range []struct{ line, refusal, name string }{
			{"/set max-tokens 1000000000", "at most", "max-tokens"},
			{"/save ../../authorized_keys", "outside your folder", "paths"},
			{"/replay fifo", "not a regular file", "a FIFO"},
			{"/replay big.jsonl", "over the bound", "replay size"},
			{"/train ppo --prompts p.jsonl --reward cmd:/bin/true --steps 1", "rewards that run a program are off", "reward programs"},
		} {
			if i > 0 {
				break
			}
			c.In.Write([]byte(probe.line + "\r"))
			if c.Saw(probe.refusal, 5*time.Second) {
				seen[probe.name] = true
			}
		}
		if i == 0 {
			for j := 0; j < 40000; j++ {
				c.In.Write([]byte{byte('a' + j%26)})
			}
			if c.Saw("a message holds at most", 10*time.Second) {
				seen["message length"] = true
			}
			c.In.Write([]byte{3})
		}
		c.In.Write([]byte("Tell me a long story about the sea.\r"))
	}
	// Replies in every chat until the load ends: the rows beyond the user's bound are refused.
	for {
		select {
		case <-stop:
			for _, c := range chats {
				if c.Saw("replies of yours are queued or decoding", 0) {
					seen["rows per user"] = true
				}
				c.In.Write([]byte("/quit\r"))
			}
			return seen
		case <-time.After(500 * time.Millisecond):
			for _, c := range chats {
				c.In.Write([]byte("Again, and longer.\r"))
			}
		}
	}
}
