package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/models"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/serve"
)

// runServe: keel serve [--model DIR] [--axis DIR] [--http ADDR] [--api-keys FILE] [--max-batch N]: one loaded
// model behind an OpenAI-compatible API with keel's per-request capping, steering and projections.
func runServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	var mf modelFlags
	mf.register(fs)
	axisDir := fs.String("axis", "", "axis folder for capping, steering and projections; default: the embedded model's own")
	ignoreHash := fs.Bool("ignore-hash", false, "use an axis made for other weights of the same shape")
	addr := fs.String("http", "127.0.0.1:8080", "address of the OpenAI-compatible API (loopback unless told otherwise)")
	keysFile := fs.String("api-keys", "", "file of bearer keys, one per line (required when --http is not loopback)")
	maxBatch := fs.Int("max-batch", 8, "requests decoding at once at most (the batch's rows)")
	queue := fs.Int("queue", 64, "requests waiting at most (more get 429)")
	name := fs.String("name", "", "the model id clients name (default: the model folder's name)")
	lim := serve.DefaultLimits()
	fs.IntVar(&lim.MaxTokens, "max-tokens", lim.MaxTokens, "max_tokens one request may ask")
	fs.IntVar(&lim.StreamsPerKey, "streams-per-key", lim.StreamsPerKey, "requests in flight per API key")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *maxBatch < 1 || *queue < 1 || lim.MaxTokens < 1 || lim.StreamsPerKey < 1 {
		return usageError{fmt.Errorf("--max-batch, --queue, --max-tokens and --streams-per-key must be positive")}
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return usageError{fmt.Errorf("--http %q: give HOST:PORT, such as 127.0.0.1:8080", *addr)}
	}
	loopback := host == "localhost"
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		loopback = true
	}
	var keys map[string]bool
	if *keysFile != "" {
		if keys, err = serve.ReadKeys(*keysFile); err != nil {
			return usageError{err}
		}
	} else if !loopback {
		return usageError{fmt.Errorf("--http %s is reachable from other machines: give --api-keys FILE so every client authenticates", *addr)}
	}
	embedded := mf.dir == ""
	_, lm, err := mf.load()
	if err != nil {
		return err
	}
	defer lm.Close()
	axis, err := openAxisFolder(lm, embedded, *axisDir, *ignoreHash)
	if err != nil {
		return err
	}
	if *name == "" {
		*name = filepath.Base(lm.Dir)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("--http %s: %w", *addr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sched := serve.NewScheduler(lm, axis, *maxBatch, *queue)
	done := make(chan struct{})
	go func() { sched.Run(ctx); close(done) }()
	api := &serve.API{Sched: sched, Name: *name, Keys: keys, Limits: lim}
	srv := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "keel serve: model %q on http://%s/v1 (up to %d requests decoding at once, %s)\n", *name, ln.Addr(), *maxBatch, map[bool]string{true: "bearer keys required", false: "no keys: loopback only"}[keys != nil])
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	sched.Close()
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutdown)
	<-done
	return nil
}

// openAxisFolder opens the axis folder a command was given, or the embedded model's own when it runs the embedded
// model without one; nil when there is neither.
func openAxisFolder(lm *model.LM, embedded bool, dir string, ignoreHash bool) (*probes.AxisFolder, error) {
	if dir == "" && embedded {
		var err error
		if dir, err = models.PersonaAxis(lm.Dir); err != nil {
			return nil, err
		}
	}
	if dir == "" {
		return nil, nil
	}
	axis, _, err := probes.OpenAxisFolderFor(dir, lm, ignoreHash)
	return axis, err
}
