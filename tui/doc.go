// Package tui is keel's Bubble Tea workbench; only cmd/keel imports it.
package tui
