package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/ssh"
	"github.com/muesli/termenv"

	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/internal/datadir"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/serve"
	"github.com/keel-lab/keel/tui"
)

// runServe: keel serve [--model DIR] [--axis DIR] [--http ADDR] [--api-keys FILE] [--ssh ADDR]
// [--authorized-keys FILE] [--host-key FILE] [--max-batch N]: one loaded model for a lab, behind an
// OpenAI-compatible API with keel's per-request capping, steering and projections, and the workbench over SSH.
func runServe(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var mf cli.ModelFlags
	mf.Register(fs)
	axisDir := fs.String("axis", "", "axis folder for capping, steering and projections; default: the model's own axis/ (the embedded model has one)")
	ignoreHash := fs.Bool("ignore-hash", false, "use an axis made for other weights of the same shape")
	addr := fs.String("http", "127.0.0.1:8080", "address of the OpenAI-compatible API (loopback unless told otherwise; \"\" for none)")
	keysFile := fs.String("api-keys", "", "file of bearer keys, one per line (required when --http is not loopback)")
	sshAddr := fs.String("ssh", "", "address of the workbench over SSH, such as 127.0.0.1:2222 (none when empty)")
	state := fs.String("state", datadir.Path("serve"), "the server's own folder: SSH host key, each user's recorded sessions, the log")
	authorized := fs.String("authorized-keys", "", "OpenSSH authorized_keys file of who may log in over SSH; a key's comment names its user (default: STATE/authorized_keys)")
	hostKey := fs.String("host-key", "", "the SSH host key, an ed25519 key made on first start (default: STATE/ssh_host_ed25519_key)")
	maxBatch := fs.Int("max-batch", 8, "requests decoding at once at most (the batch's rows)")
	queue := fs.Int("queue", 64, "requests waiting at most (more get 429)")
	name := fs.String("name", "", "the model id clients name (default: the model folder's name)")
	lim := serve.DefaultLimits()
	fs.IntVar(&lim.MaxTokens, "max-tokens", lim.MaxTokens, "max_tokens one request may ask")
	fs.IntVar(&lim.StreamsPerKey, "streams-per-key", lim.StreamsPerKey, "requests in flight per API key")
	fs.IntVar(&lim.MaxConns, "http-max-conns", lim.MaxConns, "HTTP connections open at once (more are closed at accept)")
	fs.DurationVar(&lim.IdleTimeout, "http-idle-timeout", lim.IdleTimeout, "a keep-alive HTTP connection with no request this long is closed")
	ssl := serve.DefaultSSHLimits()
	fs.IntVar(&ssl.ChatsPerUser, "ssh-chats-per-user", ssl.ChatsPerUser, "workbench chats one SSH user may have open")
	fs.IntVar(&ssl.ChatsPerConn, "ssh-chats-per-conn", ssl.ChatsPerConn, "workbench chats one SSH connection may carry (OpenSSH ControlMaster sessions)")
	fs.IntVar(&ssl.RowsPerUser, "ssh-rows-per-user", ssl.RowsPerUser, "replies of one SSH user queued or decoding at once")
	fs.IntVar(&ssl.JobsPerUser, "ssh-jobs-per-user", ssl.JobsPerUser, "background jobs one SSH user may have unfinished")
	fs.IntVar(&ssl.JobsMachine, "ssh-jobs", ssl.JobsMachine, "background jobs of all SSH users unfinished at once")
	fs.IntVar(&ssl.JobThreads, "ssh-job-threads", ssl.JobThreads, "libtorch threads of one SSH user's job")
	fs.Int64Var(&ssl.JobMemory, "ssh-job-memory", ssl.JobMemory, "address space of one SSH user's job in bytes (0: no bound)")
	fs.IntVar(&ssl.MaxMessage, "ssh-max-message", ssl.MaxMessage, "characters of one message over SSH")
	fs.Int64Var(&ssl.MaxRead, "ssh-max-read", ssl.MaxRead, "bytes of a file an SSH user has read (/replay, /train data)")
	fs.IntVar(&ssl.MaxCols, "ssh-max-cols", ssl.MaxCols, "terminal columns a chat draws at most (a larger pty is clamped)")
	fs.IntVar(&ssl.MaxRows, "ssh-max-rows", ssl.MaxRows, "terminal rows a chat draws at most")
	fs.IntVar(&ssl.MaxConns, "ssh-max-conns", ssl.MaxConns, "SSH connections open at once (more are closed at accept)")
	fs.IntVar(&ssl.MaxUnauth, "ssh-max-unauthenticated", ssl.MaxUnauth, "SSH connections still logging in at once")
	fs.DurationVar(&ssl.HandshakeTimeout, "ssh-login-timeout", ssl.HandshakeTimeout, "time from connecting to an open session")
	fs.DurationVar(&ssl.IdleTimeout, "ssh-idle-timeout", ssl.IdleTimeout, "an SSH connection with no traffic this long is closed")
	fs.Func("allow-reward-program", "a program SSH users' reward specs may run as cmd:PROGRAM (matched whole; repeatable; none by default)", func(v string) error {
		if strings.TrimSpace(v) == "" {
			return fmt.Errorf("give a program")
		}
		ssl.RewardPrograms = append(ssl.RewardPrograms, v)
		return nil
	})
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *maxBatch < 1 || *queue < 1 || lim.MaxTokens < 1 || lim.StreamsPerKey < 1 || lim.MaxConns < 1 {
		return cli.Usagef("--max-batch, --queue, --max-tokens, --streams-per-key and --http-max-conns must be positive")
	}
	if err := ssl.Check(); err != nil {
		return cli.UsageError{Err: err}
	}
	ssl.MaxTokens = lim.MaxTokens
	if *addr == "" && *sshAddr == "" {
		return cli.Usagef("--http \"\" and no --ssh: give at least one address to serve on")
	}
	var keys map[string]bool
	if *addr != "" {
		loopback, err := isLoopback("--http", *addr)
		if err != nil {
			return err
		}
		if *keysFile != "" {
			if keys, err = serve.ReadKeys(*keysFile); err != nil {
				return cli.UsageError{Err: err}
			}
		} else if !loopback {
			return cli.Usagef("--http %s is reachable from other machines: give --api-keys FILE so every client authenticates", *addr)
		}
	}
	var sshd *serve.SSH
	if *sshAddr != "" {
		if _, err := isLoopback("--ssh", *sshAddr); err != nil {
			return err
		}
		if *authorized == "" {
			*authorized = filepath.Join(*state, "authorized_keys")
		}
		if *hostKey == "" {
			*hostKey = filepath.Join(*state, "ssh_host_ed25519_key")
		}
		if _, err := serve.ReadAuthorizedKeys(*authorized); err != nil {
			return cli.UsageError{Err: err}
		}
		cfg := tui.DefaultConfig()
		if err := tui.LoadConfig(&cfg); err != nil {
			return err
		}
		exe, _ := os.Executable()
		sshd = &serve.SSH{HostKey: *hostKey, AuthorizedKeys: *authorized, StateDir: *state, Exe: exe,
			Version: version, Device: mf.Device, DType: mf.DType, Config: cfg, Limits: ssl}
	}
	_, lm, err := mf.Load()
	if err != nil {
		return err
	}
	defer lm.Close()
	axis, err := probes.OpenModelAxis(lm, cli.AxisPath(*axisDir), *ignoreHash)
	if err != nil {
		return err
	}
	if *name == "" {
		*name = filepath.Base(lm.Dir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sched := serve.NewScheduler(lm, axis, *maxBatch, *queue)
	sched.MaxTokens, sched.RowsPerOwner = lim.MaxTokens, ssl.RowsPerUser
	done := make(chan struct{})
	go func() { sched.Run(ctx); close(done) }()
	defer func() { sched.Close(); <-done }()
	errc := make(chan error, 2)
	if *addr != "" {
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			return fmt.Errorf("--http %s: %w", *addr, err)
		}
		api := &serve.API{Sched: sched, Name: *name, Keys: keys, Limits: lim}
		srv := api.Server()
		ln = serve.LimitListener(ln, lim.MaxConns)
		fmt.Fprintf(stdout, "keel serve: model %q on http://%s/v1 (up to %d requests decoding at once, %s)\n", *name, ln.Addr(), *maxBatch, map[bool]string{true: "bearer keys required", false: "no keys: loopback only"}[keys != nil])
		go func() {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("--http %s: %w", *addr, err)
			}
		}()
		defer func() {
			shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(shutdown)
		}()
	}
	if sshd != nil {
		if err := os.MkdirAll(*state, 0o700); err != nil {
			return fmt.Errorf("--state %s: %w", *state, err)
		}
		logFile, err := os.OpenFile(filepath.Join(*state, "serve.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("--state %s: %w", *state, err)
		}
		defer logFile.Close()
		sshd.Sched, sshd.Log = sched, io.MultiWriter(stderr, logFile)
		// The bubbles components style themselves through lipgloss's default renderer: every user's panes get
		// 256 colours on keel's fixed dark background, as their own styles do, without asking a terminal.
		lipgloss.SetColorProfile(termenv.ANSI256)
		lipgloss.SetHasDarkBackground(true)
		srv, err := sshd.Server(*sshAddr)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", *sshAddr)
		if err != nil {
			return fmt.Errorf("--ssh %s: %w", *sshAddr, err)
		}
		host, port, _ := net.SplitHostPort(ln.Addr().String())
		fmt.Fprintf(stdout, "keel serve: the workbench on ssh -p %s %s (keys in %s, sessions under %s)\n", port, host, *authorized, filepath.Join(*state, "users"))
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, ssh.ErrServerClosed) {
				errc <- fmt.Errorf("--ssh %s: %w", *sshAddr, err)
			}
		}()
		// Closing ends every connection: their replies stop (freeing their rows) and their recordings close.
		defer func() { srv.Close(); sshd.Wait() }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// isLoopback checks an address flag's HOST:PORT and reports whether only this machine can reach it.
func isLoopback(flag, addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, cli.Usagef("%s %q: give HOST:PORT, such as 127.0.0.1:8080", flag, addr)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}
