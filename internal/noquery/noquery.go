// Package noquery keeps bubbletea's package initialisation from querying the terminal.
//
// bubbletea v1, in its package init, asks lipgloss whether the background is dark; lipgloss asks the terminal
// (OSC 11 and a cursor-position report) and waits up to 5 s for an answer that a silent terminal (a multiplexer
// over SSH, a serial console) never sends. keel takes its colours from the environment and never queries.
//
// Go initialises packages in import-path order wherever dependencies allow (the language spec, since Go 1.21).
// This module's path sorts before every github.com path, and it imports only os, so its init runs before
// bubbletea's: it sets TERM=dumb, which termenv reads as "this terminal cannot answer" (the background then comes
// from COLORFGBG, or is taken as dark), and Restore puts the user's TERM back once bubbletea is initialised.
// keel's tui package calls Restore from its own init, which runs after bubbletea's.
package noquery

import "os"

var term, hadTerm = os.LookupEnv("TERM")

func init() {
	os.Setenv("TERM", "dumb")
}

// Restore gives TERM back its value from before initialisation (or unsets it).
func Restore() {
	if hadTerm {
		os.Setenv("TERM", term)
	} else {
		os.Unsetenv("TERM")
	}
}
