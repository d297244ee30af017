// Package tui is keel's Bubble Tea workbench: a root model handing messages to one child per pane over a
// workbench.Session. Only cmd/keel (the local workbench) and serve (the workbench over SSH) import it.
package tui
