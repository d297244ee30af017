package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/serve"
)

// runBenchServe: keel bench serve [--clients 1,8,32] [--json]: keel serve on loopback under 1, 8 and 32 clients
// streaming at once; each count's aggregate tokens/s and time to first token, against one client's.
func runBenchServe(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var mf cli.ModelFlags
	mf.Register(fs)
	clientsFlag := fs.String("clients", "1,8,32", "client counts, comma-separated (the first is the reference)")
	requests := fs.Int("requests", 4, "requests each client sends, one after another")
	maxTokens := fs.Int("max-tokens", 32, "tokens per request")
	maxBatch := fs.Int("max-batch", 32, "the server's batch limit")
	capOn := fs.Bool("cap", true, "every request caps (keel's extension) and asks a projection")
	asJSON := fs.Bool("json", false, "print one JSON object of the figures")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	var counts []int
	for _, f := range strings.Split(*clientsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 256 {
			return cli.Usagef("--clients %q: give counts from 1 to 256, comma-separated", *clientsFlag)
		}
		counts = append(counts, n)
	}
	if *requests < 1 || *maxTokens < 1 || *maxBatch < 1 {
		return cli.Usagef("--requests, --max-tokens and --max-batch must be positive")
	}
	_, lm, err := mf.Load()
	if err != nil {
		return err
	}
	defer lm.Close()
	axis, err := probes.OpenModelAxis(lm, "", false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sched := serve.NewScheduler(lm, axis, *maxBatch, 1024)
	go sched.Run(ctx)
	lim := serve.DefaultLimits()
	lim.StreamsPerKey = 1024
	api := &serve.API{Sched: sched, Name: "bench", Limits: lim}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: api.Handler()}
	go srv.Serve(ln)
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/v1/chat/completions"
	keel := map[string]any{}
	if *capOn && axis != nil {
		keel = map[string]any{"cap": "on", "project": []int{lm.NumLayers() / 2}}
	}
	type result struct{ tps, p50, p99 float64 }
	results := map[int]result{}
	for _, c := range counts {
		var mu sync.Mutex
		var ttfts []float64
		tokens := 0
		var wg sync.WaitGroup
		var firstErr error
		start := time.Now()
		for client := 0; client < c; client++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := 0; r < *requests; r++ {
					body, _ := json.Marshal(map[string]any{"model": "bench", "stream": true, "max_tokens": *maxTokens, "temperature": 0.7, "seed": client*1000 + r,
						"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("Tell me about yourself, %d.", r)}}, "keel": keel})
					sent := time.Now()
					n, ttft, err := streamOnce(url, body)
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					tokens += n
					if n > 0 {
						ttfts = append(ttfts, ttft.Sub(sent).Seconds()*1000)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return fmt.Errorf("bench serve with %d clients: %w", c, firstErr)
		}
		results[c] = result{tps: float64(tokens) / time.Since(start).Seconds(), p50: percentile(ttfts, 0.5), p99: percentile(ttfts, 0.99)}
		fmt.Fprintf(stderr, "%d clients: %d tokens, %.1f tok/s, time to first token p50 %.1f ms, p99 %.1f ms\n", c, tokens, results[c].tps, results[c].p50, results[c].p99)
	}
	ref := results[counts[0]]
	figs := map[string]figure{}
	var order []string
	for _, c := range counts {
		r := results[c]
		for _, f := range []struct {
			name       string
			keel, base float64
			unit       string
		}{{"tokens_per_s", r.tps, ref.tps, "tok/s"}, {"ttft_p50", r.p50, ref.p50, "ms"}, {"ttft_p99", r.p99, ref.p99, "ms"}} {
			name := fmt.Sprintf("serve_%s_%d_clients", f.name, c)
			figs[name] = ratio(f.keel, f.base, f.unit)
			order = append(order, name)
		}
	}
	notes := map[string]string{"reference": fmt.Sprintf("the same figure with %d client(s); each client streams %d requests of %d tokens one after another", counts[0], *requests, *maxTokens)}
	return printFigures(stdout, figs, order, *asJSON, notes)
}

// streamOnce sends one streamed request and counts the token chunks, noting when the first arrived.
func streamOnce(url string, body []byte) (int, time.Time, error) {
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, time.Time{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		raw, _ := io.ReadAll(resp.Body)
		return 0, time.Time{}, fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	var first time.Time
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		if strings.Contains(line, `"keel":`) {
			if n == 0 {
				first = time.Now()
			}
			n++
		}
	}
	return n, first, sc.Err()
}

func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}
