// Package layering holds the test that keeps keel's packages layered as docs/architecture.md draws them: each
// top-level package imports only the ones below it.
package layering
