package serve

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An authorized_keys file names each key's user by its comment (or fingerprint), and a line that is not a key is
// one error naming its line.
func TestReadAuthorizedKeys(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "authorized_keys")
	good := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0a9sYpsr4F2Q0NqDCjBoF2YT8tGsMDq0X8EwL7nuQZ alice@laptop\n" +
		"# a comment line\n\n" +
		"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC8fAa0Xsk9C4rqlm2hNqqkc6dDz5iDvDAKgo6Wkd8Ly\n"
	os.WriteFile(path, []byte(good), 0o600)
	users, err := ReadAuthorizedKeys(path)
	if err != nil || len(users) != 2 || users[0].Name != "alice-laptop" || !strings.HasPrefix(users[1].Name, "SHA256-") {
		t.Fatalf("%+v %v", users, err)
	}
	for content, want := range map[string]string{
		good + "not a key\n": "line 5: not a public key",
		"# nobody\n":         "has no public keys",
	} {
		os.WriteFile(path, []byte(content), 0o600)
		if _, err := ReadAuthorizedKeys(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q, got %v", want, err)
		}
	}
	if _, err := ReadAuthorizedKeys(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "give an OpenSSH authorized_keys file") {
		t.Errorf("a missing file: %v", err)
	}
}

func FuzzReadAuthorizedKeys(f *testing.F) {
	f.Add([]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0a9sYpsr4F2Q0NqDCjBoF2YT8tGsMDq0X8EwL7nuQZ a/b c\n"))
	f.Add([]byte("command=\"x\" ssh-rsa AAAA\n#\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		path := filepath.Join(t.TempDir(), "keys")
		os.WriteFile(path, raw, 0o600)
		users, _ := ReadAuthorizedKeys(path)
		for _, u := range users { // a user's name is a folder of its own under users/
			if u.Name == "" || u.Name == "." || u.Name == ".." || strings.ContainsAny(u.Name, "/\\") {
				t.Fatalf("user name %q from %q", u.Name, raw)
			}
		}
	})
}

// authorized_keys options: from= patterns as OpenSSH matches them, restrict/no-pty and pty, expiry-time; any other
// option refuses the file, naming the line.
func TestAuthorizedKeysOptions(t *testing.T) {
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0a9sYpsr4F2Q0NqDCjBoF2YT8tGsMDq0X8EwL7nuQZ alice\n"
	path := filepath.Join(t.TempDir(), "keys")
	read := func(opts string) (User, error) {
		os.WriteFile(path, []byte(opts+" "+key), 0o600)
		users, err := ReadAuthorizedKeys(path)
		if err != nil {
			return User{}, err
		}
		return users[0], nil
	}
	addr := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 4242} }
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for opts, want := range map[string]map[string]bool{
		`from="127.0.0.1"`:                       {"127.0.0.1": true, "10.0.0.1": false},
		`from="10.0.*.*,!10.0.0.9"`:              {"10.0.3.4": true, "10.0.0.9": false, "127.0.0.1": false},
		`from="192.168.0.0/16"`:                  {"192.168.4.5": true, "192.169.0.1": false},
		`from="::1"`:                             {"::1": true, "127.0.0.1": false},
		`no-port-forwarding,no-agent-forwarding`: {"8.8.8.8": true},
	} {
		u, err := read(opts)
		if err != nil {
			t.Fatalf("%s: %v", opts, err)
		}
		for ip, ok := range want {
			if got, why := u.Admits(addr(ip), now); got != ok {
				t.Errorf("%s from %s: %v (%s), want %v", opts, ip, got, why, ok)
			}
		}
	}
	for opts, noPty := range map[string]bool{"restrict": true, "no-pty": true, "restrict,pty": false, "": false} {
		if u, err := read(opts); err != nil || u.NoPty != noPty {
			t.Errorf("%q: no-pty %v, %v", opts, u.NoPty, err)
		}
	}
	u, err := read(`expiry-time="20261201Z"`)
	if err != nil {
		t.Fatal(err)
	}
	if ok, why := u.Admits(addr("127.0.0.1"), now); ok || !strings.Contains(why, "expired") {
		t.Errorf("an expired key: %v %s", ok, why)
	}
	for _, opts := range []string{`command="/bin/sh"`, `environment="A=B"`, `permitopen="h:1"`, "cert-authority", `from="10.0.0.0/99"`, `expiry-time="soon"`} {
		if _, err := read(opts); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%s: %v", opts, err)
		}
	}
}
