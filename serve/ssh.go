package serve

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/ssh"
	"github.com/charmbracelet/wish"
	"github.com/charmbracelet/wish/activeterm"
	bm "github.com/charmbracelet/wish/bubbletea"
	"github.com/charmbracelet/wish/recover"
	"github.com/muesli/termenv"
	gossh "golang.org/x/crypto/ssh"

	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/tui"
	"github.com/keel-lab/keel/workbench"
)

// SSH serves the workbench over SSH: every session from an authorized key gets the full TUI, its own chat on the
// scheduler's model (a row of the shared batch per reply), with a confined policy: its files in
// STATE/users/NAME, its jobs in STATE/runs/NAME, and the bounds of Limits. docs/security.md is the threat model.
type SSH struct {
	Sched *Scheduler
	// HostKey is the server's ed25519 key, made on first start and kept (clients remember it).
	HostKey string
	// AuthorizedKeys is an OpenSSH authorized_keys file, read again at every login: a key added there gets in
	// without a restart, a key removed is refused from then on. A key's comment names its user.
	AuthorizedKeys string
	// StateDir holds users/NAME (each user's files and recorded sessions) and runs/NAME (their jobs).
	StateDir      string
	Exe           string // the keel binary the jobs run
	Version       string
	Device, DType string // as the status line shows them
	Config        tui.Config
	Log           io.Writer // one line per login, refusal and error (nil: none)
	Limits        SSHLimits

	logMu sync.Mutex
	chats sync.WaitGroup // open chats: Wait outlasts them
	// sessionChats maps each session (not each connection: one connection may carry several) to its chat.
	sessionChats sync.Map // ssh.Session -> *sessionChat

	mu       sync.Mutex
	perUser  map[string]int // open chats by user
	unauthBy map[string]int // connections logging in, by client host
	conns    atomic.Int64   // connections open
	unauth   atomic.Int64   // connections not yet through authentication
}

// SSHLimits bound what SSH users may hold and consume; each is a keel serve flag.
type SSHLimits struct {
	ChatsPerUser, ChatsPerConn int           // open workbench sessions
	RowsPerUser                int           // replies queued or decoding per user (the scheduler's RowsPerOwner)
	JobsPerUser, JobsMachine   int           // unfinished background jobs
	JobThreads                 int           // libtorch threads of one job
	JobMemory                  int64         // address space of one job in bytes (0: none)
	MaxTokens                  int           // tokens of one reply (the API's bound)
	MaxMessage                 int           // characters of one message
	MaxRead                    int64         // bytes of a file a user has read (/replay, /train data)
	MaxCols, MaxRows           int           // the terminal size a chat draws at most (a larger pty is clamped)
	MaxConns, MaxUnauth        int           // connections at once, and of them not yet authenticated
	HandshakeTimeout           time.Duration // from accept to an open session
	IdleTimeout                time.Duration // a connection with no traffic either way is closed
	// RewardPrograms are the programs a user's reward spec may run (cmd:PROGRAM, matched whole); none by default.
	RewardPrograms []string
}

// DefaultSSHLimits suit a lab sharing one GPU box.
func DefaultSSHLimits() SSHLimits {
	return SSHLimits{ChatsPerUser: 4, ChatsPerConn: 2, RowsPerUser: 2, JobsPerUser: 1, JobsMachine: 2, JobThreads: 2,
		JobMemory: 16 << 30, MaxTokens: DefaultLimits().MaxTokens, MaxMessage: 16 << 10, MaxRead: 64 << 20,
		MaxCols: 500, MaxRows: 200, MaxConns: 64, MaxUnauth: 16, HandshakeTimeout: 20 * time.Second, IdleTimeout: 30 * time.Minute}
}

type (
	userKey    struct{}
	trackerKey struct{}
)

func (c *SSH) logf(format string, args ...any) {
	if c.Log == nil {
		return
	}
	c.logMu.Lock()
	defer c.logMu.Unlock()
	fmt.Fprintf(c.Log, "ssh: "+format+"\n", args...)
}

// Server makes the SSH server (Serve or ListenAndServe starts it); a bad authorized_keys file or host key is
// refused here.
func (c *SSH) Server(addr string) (*ssh.Server, error) {
	c.Limits = mergeSSHLimits(c.Limits)
	if _, err := ReadAuthorizedKeys(c.AuthorizedKeys); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(c.HostKey), 0o700); err != nil {
		return nil, fmt.Errorf("--host-key %s: %w", c.HostKey, err)
	}
	s, err := wish.NewServer(
		wish.WithAddress(addr),
		wish.WithVersion("keel"),
		wish.WithHostKeyPath(c.HostKey),
		wish.WithPublicKeyAuth(c.authorize),
		wish.WithIdleTimeout(c.Limits.IdleTimeout),
		// The last is the outermost: a panic ends one connection, not the server; no terminal, no chat; the
		// session's quotas and its pty's bounds before the workbench starts; its chat closed when it ends.
		wish.WithMiddleware(
			c.endChat,
			bm.MiddlewareWithProgramHandler(c.program, termenv.Ascii),
			c.admit,
			activeterm.Middleware(),
			recover.Middleware(),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("--host-key %s: %w (remove it to have a new one made)", c.HostKey, err)
	}
	s.ConnCallback = c.track
	return s, nil
}

// mergeSSHLimits fills the limits left zero with the defaults.
func mergeSSHLimits(l SSHLimits) SSHLimits {
	d := DefaultSSHLimits()
	pick := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	pick(&l.ChatsPerUser, d.ChatsPerUser)
	pick(&l.ChatsPerConn, d.ChatsPerConn)
	pick(&l.RowsPerUser, d.RowsPerUser)
	pick(&l.JobsPerUser, d.JobsPerUser)
	pick(&l.JobsMachine, d.JobsMachine)
	pick(&l.JobThreads, d.JobThreads)
	pick(&l.MaxTokens, d.MaxTokens)
	pick(&l.MaxMessage, d.MaxMessage)
	pick(&l.MaxCols, d.MaxCols)
	pick(&l.MaxRows, d.MaxRows)
	pick(&l.MaxConns, d.MaxConns)
	pick(&l.MaxUnauth, d.MaxUnauth)
	if l.MaxRead <= 0 {
		l.MaxRead = d.MaxRead
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = d.HandshakeTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	return l
}

// connTracker is a connection's place in the counts: it leaves them once, when it closes.
type connTracker struct {
	net.Conn
	c         *SSH
	through   atomic.Bool // a session opened: past authentication
	closed    atomic.Bool
	loginLeft atomic.Bool // its login slot is given back
	timer     *time.Timer
	host      string // the client's address, without its port
	mu        sync.Mutex
	open      int // sessions open on this connection
}

func (t *connTracker) Close() error {
	if !t.closed.Swap(true) {
		t.timer.Stop()
		t.c.conns.Add(-1)
		t.leaveLogin()
	}
	return t.Conn.Close()
}

// passed counts the connection as authenticated (a session opened on it).
func (t *connTracker) passed() {
	if !t.through.Swap(true) {
		t.timer.Stop()
		t.leaveLogin()
	}
}

// leaveLogin gives back the connection's login slot, once, whichever comes first: its first session or its
// close.
func (t *connTracker) leaveLogin() {
	if t.loginLeft.Swap(true) {
		return
	}
	t.c.unauth.Add(-1)
	t.c.mu.Lock()
	if t.c.unauthBy[t.host]--; t.c.unauthBy[t.host] <= 0 {
		delete(t.c.unauthBy, t.host)
	}
	t.c.mu.Unlock()
}

// track admits a new connection under the connection bounds, or closes it at once; one that opens no session
// within the handshake timeout is closed.
func (c *SSH) track(ctx ssh.Context, conn net.Conn) net.Conn {
	if c.conns.Add(1) > int64(c.Limits.MaxConns) {
		c.conns.Add(-1)
		c.logf("refused a connection from %s: %d connections open (--ssh-max-conns)", remoteHost(conn.RemoteAddr()), c.Limits.MaxConns)
		return nil
	}
	if c.unauth.Add(1) > int64(c.Limits.MaxUnauth) {
		c.unauth.Add(-1)
		c.conns.Add(-1)
		c.logf("refused a connection from %s: %d connections are logging in (--ssh-max-unauthenticated)", remoteHost(conn.RemoteAddr()), c.Limits.MaxUnauth)
		return nil
	}
	// One host holds at most a quarter of the login slots: a flood from one address leaves the rest to others.
	host := hostOf(conn.RemoteAddr())
	c.mu.Lock()
	if c.unauthBy == nil {
		c.unauthBy = map[string]int{}
	}
	if c.unauthBy[host] >= max(1, c.Limits.MaxUnauth/4) {
		c.mu.Unlock()
		c.unauth.Add(-1)
		c.conns.Add(-1)
		c.logf("refused a connection from %s: %d of its connections are logging in", host, max(1, c.Limits.MaxUnauth/4))
		return nil
	}
	c.unauthBy[host]++
	c.mu.Unlock()
	t := &connTracker{Conn: conn, c: c, host: host}
	t.timer = time.AfterFunc(c.Limits.HandshakeTimeout, func() {
		if !t.through.Load() {
			c.logf("closed a connection from %s: no session within %s", remoteHost(conn.RemoteAddr()), c.Limits.HandshakeTimeout)
			t.Close()
		}
	})
	ctx.SetValue(trackerKey{}, t)
	return t
}

// authorize lets in a key listed in the authorized_keys file as it is now, from an address and at a time its
// line's options allow.
func (c *SSH) authorize(ctx ssh.Context, key ssh.PublicKey) bool {
	users, err := ReadAuthorizedKeys(c.AuthorizedKeys)
	if err != nil {
		c.logf("refusing every key: %v", err)
		return false
	}
	for _, u := range users {
		if !ssh.KeysEqual(u.Key, key) {
			continue
		}
		if ok, why := u.Admits(ctx.RemoteAddr(), time.Now()); !ok {
			c.logf("refused %s (%s) from %s: %s", gossh.FingerprintSHA256(key), u.Name, remoteHost(ctx.RemoteAddr()), why)
			return false
		}
		ctx.SetValue(userKey{}, u)
		return true
	}
	c.logf("refused %s from %s: not in %s", gossh.FingerprintSHA256(key), remoteHost(ctx.RemoteAddr()), c.AuthorizedKeys)
	return false
}

// clampedSession is a session whose terminal size is bounded: the workbench draws at most MaxCols x MaxRows
// whatever size the client claims.
type clampedSession struct {
	ssh.Session
	cols, rows int
	windows    chan ssh.Window
}

func (s *clampedSession) clamp(w ssh.Window) ssh.Window {
	w.Width, w.Height = min(max(w.Width, 0), s.cols), min(max(w.Height, 0), s.rows)
	return w
}

// Pty implements ssh.Session with the size clamped.
func (s *clampedSession) Pty() (ssh.Pty, <-chan ssh.Window, bool) {
	pty, _, ok := s.Session.Pty()
	pty.Window = s.clamp(pty.Window)
	return pty, s.windows, ok
}

// admit runs a session's checks before its workbench: the key may open a terminal, the user and the connection
// are under their chat bounds, and the terminal's size is clamped.
func (c *SSH) admit(next ssh.Handler) ssh.Handler {
	return func(sess ssh.Session) {
		t, _ := sess.Context().Value(trackerKey{}).(*connTracker)
		if t != nil {
			t.passed()
		}
		u, _ := sess.Context().Value(userKey{}).(User)
		if u.NoPty {
			wish.Fatalln(sess, "keel: this key may not open a terminal (restrict or no-pty in authorized_keys), and the workbench is one: ask the operator for a line with pty")
			return
		}
		if u.Name == "" {
			wish.Fatalln(sess, "keel: no user for this key")
			return
		}
		if t != nil {
			t.mu.Lock()
			if t.open >= c.Limits.ChatsPerConn {
				t.mu.Unlock()
				wish.Fatalf(sess, "keel: %d chats are open on this connection (the bound is %d): close one first\n", c.Limits.ChatsPerConn, c.Limits.ChatsPerConn)
				return
			}
			t.open++
			t.mu.Unlock()
			defer func() { t.mu.Lock(); t.open--; t.mu.Unlock() }()
		}
		c.mu.Lock()
		if c.perUser == nil {
			c.perUser = map[string]int{}
		}
		if c.perUser[u.Name] >= c.Limits.ChatsPerUser {
			c.mu.Unlock()
			wish.Fatalf(sess, "keel: %s has %d chats open (the bound per user is %d): close one first\n", u.Name, c.Limits.ChatsPerUser, c.Limits.ChatsPerUser)
			return
		}
		c.perUser[u.Name]++
		c.mu.Unlock()
		defer func() { c.mu.Lock(); c.perUser[u.Name]--; c.mu.Unlock() }()

		cs := &clampedSession{Session: sess, cols: c.Limits.MaxCols, rows: c.Limits.MaxRows, windows: make(chan ssh.Window, 1)}
		if _, windows, ok := sess.Pty(); ok {
			ctx, cancel := context.WithCancel(sess.Context())
			defer cancel()
			go func() { // cs.windows stays open: its reader takes a closed channel for endless resizes
				for {
					select {
					case w, ok := <-windows:
						if !ok {
							return
						}
						select { // the latest size wins: a flood of resizes is not queued
						case cs.windows <- cs.clamp(w):
						default:
							select {
							case <-cs.windows:
							default:
							}
							cs.windows <- cs.clamp(w)
						}
					case <-ctx.Done():
						return
					}
				}
			}()
		}
		next(cs)
	}
}

// program is a session's workbench: its own chat (recorded under the user's folder) on the shared model, with
// the confined policy.
func (c *SSH) program(sess ssh.Session) *tea.Program {
	u, _ := sess.Context().Value(userKey{}).(User)
	pty, _, _ := sess.Pty()
	fail := func(err error) *tea.Program {
		c.logf("%s: %v", u.Name, err)
		wish.Fatalln(sess, "keel: "+err.Error())
		return nil
	}
	space, err := workbench.OpenUserSpace(filepath.Join(c.StateDir, "users", u.Name))
	if err != nil {
		return fail(err)
	}
	dir := filepath.Join(space.Dir(), "sessions")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		space.Close()
		return fail(err)
	}
	lim := c.Limits
	policy := workbench.Policy{Files: space, MaxTokens: lim.MaxTokens, MaxMessage: lim.MaxMessage, MaxRead: lim.MaxRead}
	sampling := c.Config.Sampling
	sampling.MaxTokens = min(sampling.MaxTokens, lim.MaxTokens)
	lm := c.Sched.Model()
	b, err := workbench.NewSharedBackend(lm, c.Sched.Axis(), workbench.LMConfig{Device: c.Device, DType: c.DType, Record: true,
		RecordPath: sessions.NewPath(dir), Version: c.Version, Sampling: sampling,
		Term: sessions.Term{Cols: pty.Window.Width, Rows: pty.Window.Height}}, c.Sched.Generator("ssh:"+u.Name))
	if err != nil {
		space.Close()
		return fail(err)
	}
	usersRuns := filepath.Join(c.StateDir, "runs")
	var p *tea.Program
	jobs := &workbench.ProcessJobs{RT: lm.RT, Exe: c.Exe, Model: lm.Dir, RunsDir: filepath.Join(usersRuns, u.Name), Owner: u.Name,
		Send: func(up workbench.JobUpdate) { p.Send(up) },
		Confine: &workbench.Confinement{Space: space, MaxRead: lim.MaxRead, Programs: lim.RewardPrograms, Threads: lim.JobThreads,
			MaxMemory: lim.JobMemory, MaxRunning: lim.JobsPerUser, MaxMachine: lim.JobsMachine,
			Running: func() (int, error) { return workbench.UnfinishedUnder(usersRuns) }}}
	chat := workbench.New(b, workbench.Options{Sampling: sampling, Jobs: jobs, Controls: workbench.StartControls(b.Info()), Policy: policy,
		NoLoad: "this chat shares keel serve's model: loading another is not offered here (run keel on the machine for that)"})
	c.chats.Add(1)
	c.setChat(sess, chat, space)
	env := func(k string) string {
		if k == "TERM" {
			return pty.Term
		}
		for _, kv := range sess.Environ() {
			if name, v, ok := strings.Cut(kv, "="); ok && name == k {
				return v
			}
		}
		return ""
	}
	app := tui.New(tui.Options{Session: chat, Jobs: jobs, Styles: tui.NewStyles(tui.ProfileFromEnv(env)), Keys: c.Config.Keys, Mouse: c.Config.Mouse, Tint: c.Config.Tint})
	p = tea.NewProgram(app, append(bm.MakeOptions(sess), tea.WithAltScreen())...)
	c.logf("%s logged in from %s (%dx%d), recording to %s", u.Name, remoteHost(sess.RemoteAddr()), pty.Window.Width, pty.Window.Height, b.Info().Recording)
	return p
}

// sessionChat is a session's chat and the folder it holds open, kept on the session itself.
type sessionChat struct {
	chat  *workbench.Session
	space *workbench.UserSpace
}

func (c *SSH) setChat(sess ssh.Session, chat *workbench.Session, space *workbench.UserSpace) {
	c.sessionChats.Store(sessionID(sess), &sessionChat{chat: chat, space: space})
}

// sessionID is what names a session among a connection's several: the underlying session, not a wrapper.
func sessionID(sess ssh.Session) ssh.Session {
	if cs, ok := sess.(*clampedSession); ok {
		return cs.Session
	}
	return sess
}

// endChat closes a session's chat once its TUI has ended (the user quit or went away): a reply in flight
// stops, freeing its row, and the recording is closed. The connection's other sessions keep theirs.
func (c *SSH) endChat(next ssh.Handler) ssh.Handler {
	return func(sess ssh.Session) {
		if v, ok := c.sessionChats.LoadAndDelete(sessionID(sess)); ok {
			sc := v.(*sessionChat)
			if err := sc.chat.Close(); err != nil {
				c.logf("closing a chat: %v", err)
			}
			sc.space.Close()
			c.chats.Done()
			u, _ := sess.Context().Value(userKey{}).(User)
			c.logf("%s left", u.Name)
		}
		next(sess)
	}
}

// Wait returns once every chat has closed (after the server's Close, their recordings are complete).
func (c *SSH) Wait() { c.chats.Wait() }

// hostOf is an address without its port.
func hostOf(a net.Addr) string {
	if a == nil {
		return "?"
	}
	if h, _, err := net.SplitHostPort(a.String()); err == nil {
		return h
	}
	return a.String()
}

func remoteHost(a net.Addr) string {
	if a == nil {
		return "?"
	}
	return a.String()
}

// Check refuses limits that would let nobody in or bound nothing.
func (l SSHLimits) Check() error {
	for _, v := range []struct {
		name string
		v    int64
	}{{"--ssh-chats-per-user", int64(l.ChatsPerUser)}, {"--ssh-chats-per-conn", int64(l.ChatsPerConn)}, {"--ssh-rows-per-user", int64(l.RowsPerUser)},
		{"--ssh-jobs-per-user", int64(l.JobsPerUser)}, {"--ssh-jobs", int64(l.JobsMachine)}, {"--ssh-job-threads", int64(l.JobThreads)},
		{"--ssh-max-message", int64(l.MaxMessage)}, {"--ssh-max-read", l.MaxRead}, {"--ssh-max-cols", int64(l.MaxCols)}, {"--ssh-max-rows", int64(l.MaxRows)},
		{"--ssh-max-conns", int64(l.MaxConns)}, {"--ssh-max-unauthenticated", int64(l.MaxUnauth)},
		{"--ssh-login-timeout", int64(l.HandshakeTimeout)}, {"--ssh-idle-timeout", int64(l.IdleTimeout)}} {
		if v.v <= 0 {
			return fmt.Errorf("%s must be positive", v.name)
		}
	}
	if l.JobMemory < 0 {
		return fmt.Errorf("--ssh-job-memory must be 0 (no bound) or positive")
	}
	return nil
}
