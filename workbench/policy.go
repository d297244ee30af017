package workbench

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/keel-lab/keel/internal/atomicfile"
)

// Policy is what a session may do besides chatting, given by its front end: the files it may name, the bounds
// on what it consumes. The local workbench and REPL act for the user on their own machine (Local); keel serve
// gives each SSH user a confined one (Confined): their own folder, and limits the operator sets.
type Policy struct {
	// Files is where every path the user names resolves: /save, /replay, /train's data.
	Files Files
	// MaxTokens bounds a reply's tokens whatever /set max-tokens says (0: no bound).
	MaxTokens int
	// MaxMessage bounds a user message, in characters (0: no bound).
	MaxMessage int
	// MaxRead bounds a file the user has read (/replay, /train's data), in bytes.
	MaxRead int64
}

// DefaultMaxRead bounds a file a session reads when its policy does not say.
const DefaultMaxRead = 256 << 20

// Local is the policy of a front end run by the machine's own user: paths as the operating system resolves them.
func Local() Policy { return Policy{Files: LocalFiles{}, MaxRead: DefaultMaxRead} }

func (p Policy) files() Files {
	if p.Files == nil {
		return LocalFiles{}
	}
	return p.Files
}

func (p Policy) maxRead() int64 {
	if p.MaxRead <= 0 {
		return DefaultMaxRead
	}
	return p.MaxRead
}

// Files is a space of files a session names by path.
type Files interface {
	// ReadFile reads a regular file of at most max bytes: a directory, a device, a FIFO or a larger file is
	// refused without reading it.
	ReadFile(name string, max int64) ([]byte, error)
	// WriteFile replaces a file whole (a reader never sees half of it).
	WriteFile(name string, data []byte) error
	// Show is how a path is named back to the user.
	Show(name string) string
}

// LocalFiles are the machine's files as the process sees them.
type LocalFiles struct{}

// ReadFile implements Files.
func (LocalFiles) ReadFile(name string, max int64) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a FIFO opens without waiting, then is refused

	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readRegular(f, name, max)
}

// WriteFile implements Files.
func (LocalFiles) WriteFile(name string, data []byte) error { return atomicfile.WriteFile(name, data) }

// Show implements Files.
func (LocalFiles) Show(name string) string { return name }

// readRegular reads an open file that must be a regular file of at most max bytes (checked on the open file, so
// nothing is read from a device or a pipe, and a file that grows while read is still cut at the bound).
func readRegular(f *os.File, name string, max int64) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s): give a file", name, kindOf(st.Mode()))
	}
	if st.Size() > max {
		return nil, fmt.Errorf("%s is %d bytes, over the bound of %d: give a smaller file", name, st.Size(), max)
	}
	raw, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) > max {
		return nil, fmt.Errorf("%s grew past the bound of %d bytes while read: give a smaller file", name, max)
	}
	return raw, nil
}

func kindOf(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeDevice != 0 || m&fs.ModeCharDevice != 0:
		return "a device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a plain file"
}

// UserSpace is a remote user's folder: every name resolves inside it through an os.Root, so no path (absolute,
// with "..", or through a symbolic link planted inside pointing out) reaches anything outside. Names are shown
// relative to it.
type UserSpace struct {
	root *os.Root
}

// OpenUserSpace makes the folder if needed and opens it as a root.
func OpenUserSpace(dir string) (*UserSpace, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &UserSpace{root: r}, nil
}

// Dir is the folder on the machine.
func (u *UserSpace) Dir() string { return u.root.Name() }

// Close releases the folder.
func (u *UserSpace) Close() error { return u.root.Close() }

// rel turns a user's path into a name inside the space: a leading "/" or "~/" means the space's top, as a
// chrooted shell would see it. What climbs out is refused by the root itself.
func (u *UserSpace) rel(name string) (string, error) {
	name = strings.TrimPrefix(name, "~/")
	name = strings.TrimLeft(name, "/")
	if name == "" || name == "~" {
		return "", fmt.Errorf("give a file name inside your folder")
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%q: a file name holds no NUL", name)
	}
	return filepath.Clean(name), nil
}

// notInFolder is a name with no file behind it in the user's folder (errors.Is it fs.ErrNotExist).
type notInFolder string

func (n notInFolder) Error() string { return string(n) + ": no such file in your folder" }
func (n notInFolder) Unwrap() error { return fs.ErrNotExist }

// confined says what a root refused, without naming anything outside the space.
func confined(name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if errors.Is(err, fs.ErrNotExist) {
		return notInFolder(name)
	}
	if strings.Contains(err.Error(), "escapes") || strings.Contains(err.Error(), "outside") {
		return fmt.Errorf("%s: outside your folder: every path names a file inside it", name)
	}
	return fmt.Errorf("%s: %v", name, err)
}

// ReadFile implements Files.
func (u *UserSpace) ReadFile(name string, max int64) ([]byte, error) {
	rel, err := u.rel(name)
	if err != nil {
		return nil, err
	}
	// O_NONBLOCK: opening a FIFO does not wait for a writer; the Stat below refuses it.
	f, err := u.root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, confined(name, err)
	}
	defer f.Close()
	return readRegular(f, name, max)
}

// WriteFile implements Files: the file is written beside its final name and renamed over it, both inside the root.
func (u *UserSpace) WriteFile(name string, data []byte) error {
	rel, err := u.rel(name)
	if err != nil {
		return err
	}
	if dir := filepath.Dir(rel); dir != "." {
		if err := u.root.MkdirAll(dir, 0o700); err != nil {
			return confined(name, err)
		}
	}
	if st, err := u.root.Lstat(rel); err == nil && !st.Mode().IsRegular() {
		return fmt.Errorf("%s is %s: give a new file name or a plain file's", name, kindOf(st.Mode()))
	}
	tmp := rel + ".keel-tmp"
	u.root.Remove(tmp) // what a write cut short left
	f, err := u.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_EXCL, 0o600)
	if err != nil {
		return confined(name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		u.root.Remove(tmp)
		return confined(name, err)
	}
	if err := f.Close(); err != nil {
		u.root.Remove(tmp)
		return confined(name, err)
	}
	if err := u.root.Rename(tmp, rel); err != nil {
		u.root.Remove(tmp)
		return confined(name, err)
	}
	return nil
}

// Show implements Files.
func (u *UserSpace) Show(name string) string {
	rel, err := u.rel(name)
	if err != nil {
		return name
	}
	return "~/" + rel
}
