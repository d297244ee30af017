# keel: `make demo` and `make test` are the two commands a fresh machine needs.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 0
export PATH := $(PATH):/usr/local/go/bin
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: all setup build demo model test check vet fuzz conformance bench-decode device-bundle clean

all: build

# Installs what is missing (libtorch through apt on Debian/Ubuntu, unless LIBTORCH or python's torch is there)
# and compiles the libtorch shim into build/.
setup:
	@command -v $(GO) >/dev/null || { echo "keel setup: Go is missing: install Go 1.26 (https://go.dev/dl) and retry" >&2; exit 1; }
	@bash scripts/setup.sh

build: setup
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/keel ./cmd/keel

# Opens the workbench on the embedded persona model.
demo: build
	bin/keel

# Rebuilds the embedded persona model from nothing with the committed recipe (corpus, tokenizer, about 40
# minutes of training on 2 cores); `keel model info` prints the new weights' sha256.
model: build
	bin/keel model build --out models/persona

vet:
	@test -z "$$(gofmt -l cmd engine steer train probes sessions tui workbench evals models internal serve provider bench)" || { gofmt -l cmd engine steer train probes sessions tui workbench evals models internal serve provider bench; echo "gofmt: files above need formatting" >&2; exit 1; }
	$(GO) vet ./...

# Reference packages for the conformance tests (pinned in package-lock.json).
conformance/tokenizers/node_modules/.package-lock.json: conformance/tokenizers/package-lock.json
	@command -v npm >/dev/null || { echo "keel: npm is missing: install Node.js 18+ (apt-get install nodejs npm)" >&2; exit 1; }
	cd conformance/tokenizers && npm ci --no-audit --no-fund

conformance/llamacpp/node_modules/.package-lock.json: conformance/llamacpp/package-lock.json
	@command -v npm >/dev/null || { echo "keel: npm is missing: install Node.js 18+ (apt-get install nodejs npm)" >&2; exit 1; }
	cd conformance/llamacpp && npm ci --omit=optional --no-audit --no-fund

conformance/openai/node_modules/.package-lock.json: conformance/openai/package-lock.json
	@command -v npm >/dev/null || { echo "keel: npm is missing: install Node.js 18+ (apt-get install nodejs npm)" >&2; exit 1; }
	cd conformance/openai && npm ci --no-audit --no-fund

conformance: conformance/tokenizers/node_modules/.package-lock.json conformance/llamacpp/node_modules/.package-lock.json conformance/openai/node_modules/.package-lock.json
	@python3 -c "import jinja2" 2>/dev/null || { echo "keel: the chat-template reference needs Python's Jinja2: apt-get install python3-jinja2" >&2; exit 1; }
	@command -v curl >/dev/null || { echo "keel: keel serve's tests use curl as a client: apt-get install curl" >&2; exit 1; }

test: build vet conformance
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz

# The checks that take minutes (the persona model's recipe rebuilt for 50 steps against its committed loss log):
# CI runs them after `make test`.
LONG_CHECKS = TestPersonaRecipeReproducesTheCommittedLossLog
check: build conformance
	KEEL_CHECK=1 $(GO) test -count=1 -timeout 30m -run '^($(LONG_CHECKS))$$' ./cmd/keel

# Every parser of untrusted input fuzzed for a short while (FUZZTIME inputs each beyond its seeds: a count, as a time
# limit that runs out while the seed corpus is still being measured fails the run); a crash found lands in the package's
# testdata/fuzz, where plain `go test` replays it from then on.
FUZZTIME ?= 1000x
FUZZ_TARGETS = ./workbench:FuzzRemoteCommandLine ./steer/ptfile:FuzzRead ./engine/gguf:FuzzParse ./engine/safetensors:FuzzParseHeader \
	./engine/tokenizer:FuzzFastSplit ./engine/tokenizer:FuzzEncodeDecode ./engine/tokenizer:FuzzRenderTemplate \
	./sessions:FuzzParse ./train:FuzzDataFiles ./train:FuzzParseReward ./probes:FuzzParseCapID ./workbench:FuzzCommandLine \
	./provider:FuzzOpenCache ./provider:FuzzParseEndpoint ./probes:FuzzParseJudgeScore ./serve:FuzzReadAuthorizedKeys
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $${t%%:*} $${t##*:} ($(FUZZTIME))"; \
	  $(GO) test "$${t%%:*}" -run '^$$' -fuzz "^$${t##*:}$$" -fuzztime $(FUZZTIME) >/tmp/keel-fuzz.log 2>&1 || { cat /tmp/keel-fuzz.log; exit 1; }; \
	done

bench-decode: build
	bin/keel bench decode

# The keel binary scripts/device-check.sh runs on a GPU machine without Go (carried in .device/).
device-bundle:
	mkdir -p .device
	GOOS=linux GOARCH=amd64 $(GO) build -ldflags "-X main.version=$(VERSION)" -o .device/keel ./cmd/keel

clean:
	rm -rf bin build
