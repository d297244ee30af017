package workbench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
)

// REPL is the line front end (keel chat without a terminal): one line per user turn, the reply streamed, the
// same slash commands as the TUI answered with the same lines.
type REPL struct {
	Session *Session
	In      io.Reader
	Out     io.Writer

	tint bool
	mu   sync.Mutex
	jobs map[string]JobUpdate
}

// JobUpdate keeps a job's latest state for /jobs (hand it to the job runner as its callback).
func (r *REPL) JobUpdate(u JobUpdate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.jobs == nil {
		r.jobs = map[string]JobUpdate{}
	}
	if old, ok := r.jobs[u.ID]; !ok || old.State != u.State {
		r.Session.RecordJob(u)
	}
	r.jobs[u.ID] = u
}

// Run reads lines until the input ends, /quit, or ctx ends.
func (r *REPL) Run(ctx context.Context) error {
	in := bufio.NewScanner(r.In)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "/") {
			if r.command(line) {
				return nil
			}
			continue
		}
		var toks []Token
		_, err := r.Session.Send(ctx, line, func(t Token) {
			io.WriteString(r.Out, t.Text)
			toks = append(toks, t)
		})
		fmt.Fprintln(r.Out)
		if IsContextLimit(err) { // the window speaks: the chat goes on after /clear or a policy change
			fmt.Fprintln(r.Out, err.Error())
			continue
		}
		if err != nil {
			return err
		}
		if used, window := r.Session.Context(); window > 0 && used*4 >= window*3 {
			fmt.Fprintf(r.Out, "context: %d of the model's %d positions\n", used, window)
		}
		if r.tint {
			fmt.Fprintln(r.Out, r.projectionLine(toks))
		}
		if ctx.Err() != nil {
			return nil
		}
	}
	return in.Err()
}

// command answers a slash command; it reports whether to leave.
func (r *REPL) command(line string) bool {
	res := r.Session.Run(line)
	for res.Slow != nil {
		if res.Notice != "" {
			fmt.Fprintln(r.Out, res.Notice)
		}
		res = res.Slow()
	}
	switch res.Action {
	case Quit:
		return true
	case ToggleTint:
		r.tint = !r.tint
		res.Notice = "projection summaries off"
		if r.tint {
			res.Notice = "projection summaries on: each reply ends with its mean projection on the axis"
		}
	case ToggleMouse:
		res.Notice = "the line REPL has no mouse (the TUI's /mouse lets the wheel scroll the chat)"
	case ToggleJobs:
		res.Notice = r.jobList()
	case PlotMode:
		res.Notice = r.plotLines(res.Arg)
	case Replay: // a line front end shows the recording as its log: turns, settings, labels, jobs
		s, err := r.Session.OpenRecording(res.Arg)
		if err != nil {
			res.Notice = err.Error()
			break
		}
		res.Notice = strings.Join(s.Log(), "\n")
	}
	if res.Notice != "" {
		fmt.Fprintln(r.Out, res.Notice)
	}
	return false
}

func (r *REPL) jobList() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.jobs) == 0 {
		return "no jobs: /train sft --data FILE --steps N starts one"
	}
	ids := make([]string, 0, len(r.jobs))
	for id := range r.jobs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte('\n')
		}
		j := r.jobs[id]
		fmt.Fprintf(&b, "%s %s %d/%d loss %.3f", j.ID, j.State, j.Step, j.Total, j.Loss)
	}
	return b.String()
}

// projectionLine summarises a reply's projections at the plotted layer against the drift line.
func (r *REPL) projectionLine(toks []Token) string {
	layer := r.Session.Controls().Layer
	var sum, lo float64
	n := 0
	for _, t := range toks {
		if !t.HasProj {
			continue
		}
		if n == 0 || t.Proj < lo {
			lo = t.Proj
		}
		sum += t.Proj
		n++
	}
	if n == 0 {
		return "no projections: load an axis with /axis DIR"
	}
	line, _ := r.Session.Scale(layer)
	return fmt.Sprintf("layer %d projection: mean %+.2f, min %+.2f over %d tokens (drift line %+.2f)", layer, sum/float64(n), lo, n, line)
}

// plotLines is the line REPL's plot: each reply's mean projection over the chat against the drift line and tau
// ("turns"), or the last reply's tokens ("tokens").
func (r *REPL) plotLines(mode string) string {
	c := r.Session.Controls()
	line, _ := r.Session.Scale(c.Layer)
	tau := r.Session.Tau(c.Layer)
	var b strings.Builder
	fmt.Fprintf(&b, "layer %d: drift line %+.2f", c.Layer, line)
	if !math.IsNaN(tau) {
		fmt.Fprintf(&b, ", tau %+.2f", tau)
	}
	if mode == "turns" {
		means := r.Session.TurnMeans()
		for i, m := range means {
			fmt.Fprintf(&b, "\nreply %d: %+.2f", i+1, m)
			if m < line {
				b.WriteString(" (below the drift line)")
			}
			if i == len(means)-1 {
				b.WriteString(" <- now")
			}
		}
		return b.String()
	}
	turns := r.Session.Turns()
	for i := len(turns) - 1; i >= 0; i-- {
		if turns[i].Role == "assistant" {
			for _, t := range turns[i].Tokens {
				if t.HasProj {
					fmt.Fprintf(&b, "\n%+6.2f %q", t.Proj, t.Text)
				}
			}
			break
		}
	}
	return b.String()
}
