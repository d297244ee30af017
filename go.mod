module github.com/keel-lab/keel

go 1.26.0

require (
	github.com/dlclark/regexp2 v1.11.5 // indirect
	github.com/ebitengine/purego v0.11.3 // indirect
	golang.org/x/text v0.44.0 // indirect
)
