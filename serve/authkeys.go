package serve

import (
	"fmt"
	"net"
	"os"
	"path"
	"strings"
	"time"

	"github.com/charmbracelet/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// User is an authorized key's user: the comment of its line in authorized_keys (letters, digits, '.', '_', '-'
// kept), or its fingerprint when the line has none, with what the line's options allow.
type User struct {
	Name string
	Key  ssh.PublicKey
	// From is the from="..." pattern list (empty: any address): OpenSSH's patterns matched against the client's
	// address ('*' and '?' wildcards, "!" negation, address/masklen).
	From []string
	// NoPty is set by restrict or no-pty (and cleared by a later pty): such a key may not open a terminal, so it
	// gets no workbench.
	NoPty bool
	// Expires is expiry-time="..." (zero: never).
	Expires time.Time
}

// maxAuthorizedKeys bounds the authorized_keys file read at every login.
const maxAuthorizedKeys = 4 << 20

// ReadAuthorizedKeys parses an authorized_keys file; a line that is not a public key, or that carries an option
// keel does not honour, is an error naming it (an option is never ignored).
func ReadAuthorizedKeys(file string) ([]User, error) {
	st, err := os.Stat(file)
	if err == nil && st.Size() > maxAuthorizedKeys {
		err = fmt.Errorf("%d bytes, over %d", st.Size(), maxAuthorizedKeys)
	}
	var raw []byte
	if err == nil {
		raw, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("--authorized-keys: %w: give an OpenSSH authorized_keys file (one public key per line)", err)
	}
	var users []User
	for n, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, comment, options, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("%s line %d: not a public key (%v): give lines as ssh-keygen writes them in .pub files", file, n+1, err)
		}
		name := safeName(comment)
		if name == "" {
			name = safeName(gossh.FingerprintSHA256(key))
		}
		u := User{Name: name, Key: key}
		if err := u.applyOptions(options); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", file, n+1, err)
		}
		users = append(users, u)
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("%s has no public keys: nobody could log in; add a user's .pub line", file)
	}
	return users, nil
}

// HonouredOptions are the authorized_keys options keel serve acts on; any other refuses the file at load.
var HonouredOptions = []string{"from=", "restrict", "no-pty", "pty", "expiry-time=", "no-port-forwarding",
	"no-agent-forwarding", "no-X11-forwarding", "no-user-rc", "port-forwarding", "agent-forwarding", "X11-forwarding", "user-rc"}

// applyOptions honours a line's options as OpenSSH does, within what keel serve offers: forwarding and user rc
// files are never offered, so their options hold as given.
func (u *User) applyOptions(options []string) error {
	for _, o := range options {
		name, value, hasValue := strings.Cut(o, "=")
		switch strings.ToLower(name) {
		case "restrict", "no-pty":
			u.NoPty = true
		case "pty":
			u.NoPty = false
		case "no-port-forwarding", "no-agent-forwarding", "no-x11-forwarding", "no-user-rc",
			"port-forwarding", "agent-forwarding", "x11-forwarding", "user-rc":
			// keel serve refuses every forwarding and runs no rc file for anyone.
		case "from":
			pats, err := unquote(value, hasValue)
			if err != nil {
				return fmt.Errorf("from=: %w", err)
			}
			for _, p := range strings.Split(pats, ",") {
				if p = strings.TrimSpace(p); p == "" {
					return fmt.Errorf("from=%q: an empty pattern", pats)
				}
				if _, _, err := net.ParseCIDR(strings.TrimPrefix(p, "!")); strings.Contains(p, "/") && err != nil {
					return fmt.Errorf("from=%q: %q is not address/masklen", pats, p)
				}
				u.From = append(u.From, p)
			}
		case "expiry-time":
			v, err := unquote(value, hasValue)
			if err != nil {
				return fmt.Errorf("expiry-time=: %w", err)
			}
			t, err := parseExpiry(v)
			if err != nil {
				return err
			}
			u.Expires = t
		default:
			return fmt.Errorf("option %q is not honoured by keel serve (it honours %s): remove it, or give this user a line without it", o, strings.Join(HonouredOptions, ", "))
		}
	}
	return nil
}

func unquote(v string, has bool) (string, error) {
	if !has || len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", fmt.Errorf("give a quoted value")
	}
	return strings.ReplaceAll(v[1:len(v)-1], `\"`, `"`), nil
}

// parseExpiry reads OpenSSH's YYYYMMDD[HHMM[SS]][Z] (local time unless Z).
func parseExpiry(v string) (time.Time, error) {
	loc := time.Local
	if strings.HasSuffix(v, "Z") {
		v, loc = strings.TrimSuffix(v, "Z"), time.UTC
	}
	for _, layout := range []string{"20060102", "200601021504", "20060102150405"} {
		if len(v) == len(layout) {
			if t, err := time.ParseInLocation(layout, v, loc); err == nil {
				return t, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("expiry-time=%q: give YYYYMMDD[HHMM[SS]][Z]", v)
}

// Admits reports whether the line lets a client in from addr now, and if not, why.
func (u User) Admits(addr net.Addr, now time.Time) (bool, string) {
	if !u.Expires.IsZero() && now.After(u.Expires) {
		return false, "the key expired at " + u.Expires.Format(time.RFC3339)
	}
	if len(u.From) == 0 {
		return true, ""
	}
	host := addr.String()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if matchFrom(u.From, host) {
		return true, ""
	}
	return false, fmt.Sprintf("%s is not in from=%q", host, strings.Join(u.From, ","))
}

// matchFrom matches an address against OpenSSH's pattern list: a negated match refuses whatever else matches.
func matchFrom(patterns []string, host string) bool {
	ip := net.ParseIP(host)
	matched := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		var ok bool
		if strings.Contains(p, "/") {
			_, cidr, err := net.ParseCIDR(p)
			ok = err == nil && ip != nil && cidr.Contains(ip)
		} else {
			// OpenSSH's patterns know only '*' and '?': what path.Match reads besides is escaped.
			literal := strings.NewReplacer(`\`, `\\`, `[`, `\[`, `]`, `\]`).Replace(strings.ToLower(p))
			ok, _ = path.Match(literal, strings.ToLower(host))
		}
		if ok && neg {
			return false
		}
		matched = matched || ok
	}
	return matched
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
