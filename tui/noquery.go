package tui

import "early.keel-lab/noquery"

// bubbletea's package init has run by now (this package imports it), without asking the terminal anything: the
// user's TERM comes back for keel's own colour choice (ProfileFromEnv).
func init() { noquery.Restore() }
