// Package datadir is where keel keeps what outlives a process: $XDG_DATA_HOME/keel (~/.local/share/keel).
package datadir

import (
	"os"
	"path/filepath"
)

// Path is a path under keel's data folder; "" when neither $XDG_DATA_HOME nor a home folder is known.
func Path(elem ...string) string {
	data := os.Getenv("XDG_DATA_HOME")
	if data == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		data = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(append([]string{data, "keel"}, elem...)...)
}
