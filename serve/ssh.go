package serve

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

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

// SSH serves the workbench over SSH: every connection from an authorized key gets the full TUI, its own chat on
// the scheduler's model (a row of the shared batch per reply), recorded under its user's folder.
type SSH struct {
	Sched *Scheduler
	// HostKey is the server's ed25519 key, made on first start and kept (clients remember it).
	HostKey string
	// AuthorizedKeys is an OpenSSH authorized_keys file, read again at every login: a key added there gets in
	// without a restart, a key removed is refused from then on. A key's comment names its user.
	AuthorizedKeys string
	// StateDir holds users/NAME/sessions, each user's recordings.
	StateDir string
	// The machine's background jobs: every user sees them all and cancels only their own.
	RunsDir, Exe  string
	Version       string
	Device, DType string // as the status line shows them
	Config        tui.Config
	Log           io.Writer // one line per login, refusal and error (nil: none)

	logMu sync.Mutex
	chats sync.WaitGroup // open chats: Wait outlasts them
}

type (
	userKey struct{}
	chatKey struct{}
)

// User is an authorized key's user: the comment of its line in authorized_keys (letters, digits, '.', '_', '-'
// kept), or its fingerprint when the line has none.
type User struct {
	Name string
	Key  ssh.PublicKey
}

// ReadAuthorizedKeys parses an authorized_keys file; a line that is not a public key is an error naming it.
func ReadAuthorizedKeys(path string) ([]User, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--authorized-keys: %w: give an OpenSSH authorized_keys file (one public key per line)", err)
	}
	var users []User
	for n, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("%s line %d: not a public key (%v): give lines as ssh-keygen writes them in .pub files", path, n+1, err)
		}
		name := safeName(comment)
		if name == "" {
			name = safeName(gossh.FingerprintSHA256(key))
		}
		users = append(users, User{Name: name, Key: key})
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("%s has no public keys: nobody could log in; add a user's .pub line", path)
	}
	return users, nil
}

// safeName keeps what a folder name may hold.
func safeName(s string) string {
	var b strings.Builder
	for _, r := range strings.TrimSpace(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteRune('-')
		}
	}
	return strings.Trim(b.String(), ".-")
}

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
		// The last is the outermost: no terminal, no chat; a panic ends one connection, not the server.
		wish.WithMiddleware(
			c.endChat,
			bm.MiddlewareWithProgramHandler(c.program, termenv.Ascii),
			activeterm.Middleware(),
			recover.Middleware(),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("--host-key %s: %w (remove it to have a new one made)", c.HostKey, err)
	}
	return s, nil
}

// authorize lets in a key listed in the authorized_keys file as it is now.
func (c *SSH) authorize(ctx ssh.Context, key ssh.PublicKey) bool {
	users, err := ReadAuthorizedKeys(c.AuthorizedKeys)
	if err != nil {
		c.logf("refusing every key: %v", err)
		return false
	}
	for _, u := range users {
		if ssh.KeysEqual(u.Key, key) {
			ctx.SetValue(userKey{}, u.Name)
			return true
		}
	}
	c.logf("refused %s from %s: not in %s", gossh.FingerprintSHA256(key), ctx.RemoteAddr(), c.AuthorizedKeys)
	return false
}

// program is a connection's workbench: its own session (recording under the user's folder) on the shared model.
func (c *SSH) program(sess ssh.Session) *tea.Program {
	user, _ := sess.Context().Value(userKey{}).(string)
	pty, _, _ := sess.Pty()
	dir := filepath.Join(c.StateDir, "users", user, "sessions")
	fail := func(err error) *tea.Program {
		c.logf("%s: %v", user, err)
		wish.Fatalln(sess, "keel: "+err.Error())
		return nil
	}
	if user == "" {
		return fail(errors.New("no user for this key"))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fail(err)
	}
	lm := c.Sched.Model()
	b, err := workbench.NewSharedBackend(lm, c.Sched.Axis(), workbench.LMConfig{Device: c.Device, DType: c.DType, Record: true,
		RecordPath: sessions.NewPath(dir), Version: c.Version, Sampling: c.Config.Sampling,
		Term: sessions.Term{Cols: pty.Window.Width, Rows: pty.Window.Height}}, c.Sched.Generator())
	if err != nil {
		return fail(err)
	}
	var p *tea.Program
	jobs := &workbench.ProcessJobs{RT: lm.RT, Exe: c.Exe, Model: lm.Dir, RunsDir: c.RunsDir, Owner: user,
		Send: func(u workbench.JobUpdate) { p.Send(u) }}
	chat := workbench.New(b, workbench.Options{Sampling: c.Config.Sampling, Jobs: jobs, Controls: workbench.StartControls(b.Info()),
		NoLoad: "this chat shares keel serve's model: loading another is not offered here (run keel on the machine for that)"})
	sess.Context().SetValue(chatKey{}, chat)
	c.chats.Add(1)
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
	c.logf("%s logged in from %s (%dx%d), recording to %s", user, remoteHost(sess.RemoteAddr()), pty.Window.Width, pty.Window.Height, b.Info().Recording)
	return p
}

// endChat closes a connection's chat once its TUI has ended (the user quit or went away): a reply in flight
// stops, freeing its row, and the recording is closed.
func (c *SSH) endChat(next ssh.Handler) ssh.Handler {
	return func(sess ssh.Session) {
		if chat, ok := sess.Context().Value(chatKey{}).(*workbench.Session); ok {
			if err := chat.Close(); err != nil {
				c.logf("closing a chat: %v", err)
			}
			c.chats.Done()
			user, _ := sess.Context().Value(userKey{}).(string)
			c.logf("%s left", user)
		}
		next(sess)
	}
}

// Wait returns once every chat has closed (after the server's Close, their recordings are complete).
func (c *SSH) Wait() { c.chats.Wait() }

func remoteHost(a net.Addr) string {
	if a == nil {
		return "?"
	}
	return a.String()
}
