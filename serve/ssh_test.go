package serve

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
