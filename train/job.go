package train

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keel-lab/keel/internal/atomicfile"
	"github.com/keel-lab/keel/internal/datadir"
)

// Job states.
const (
	Queued    = "queued"
	Running   = "running"
	Paused    = "paused"
	Done      = "done"
	Failed    = "failed"
	Cancelled = "cancelled"
)

// Metrics is one logged step: the core's figures plus the trainer's own (Extra).
type Metrics struct {
	Step         int                `json:"step"`
	Loss         float64            `json:"loss"`
	EvalLoss     *float64           `json:"eval_loss,omitempty"`
	LR           float64            `json:"lr"`
	GradNorm     float64            `json:"grad_norm"`
	TokensPerSec float64            `json:"tokens_per_sec"`
	ETASeconds   float64            `json:"eta_seconds"`
	Extra        map[string]float64 `json:"extra,omitempty"`
	Time         time.Time          `json:"time"`
}

// State is a run's state.json: what another process needs to list, watch or cancel it.
type State struct {
	ID         string    `json:"id"`
	Kind       string    `json:"kind"`
	State      string    `json:"state"`
	PID        int       `json:"pid"`
	PIDStart   uint64    `json:"pid_start,omitempty"` // the process's start time (clock ticks after boot): a pid alone may be reused
	Step       int       `json:"step"`
	TotalSteps int       `json:"total_steps"`
	Loss       float64   `json:"loss"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	Error      string    `json:"error,omitempty"`
	Phase      string    `json:"phase,omitempty"` // the last thing the trainer said it was doing (scoring, fitting the value head)
	Final      string    `json:"final,omitempty"`
	Checkpoint string    `json:"checkpoint,omitempty"`
}

// Event is what a running job reports to whoever watches it in-process (the TUI).
type Event struct {
	State   string
	Metrics *Metrics
	Message string
}

// Run is one run folder: config.json, state.json, metrics.jsonl, metrics.csv, loss.png, log.txt,
// checkpoints/step-N/, final/.
type Run struct {
	Dir string
	ID  string
}

// DefaultRunsDir is $XDG_DATA_HOME/keel/runs (~/.local/share/keel/runs).
func DefaultRunsDir() string {
	if d := os.Getenv("KEEL_RUNS"); d != "" {
		return d
	}
	return datadir.Path("runs")
}

// NewRun makes a run folder with a fresh id (kind-date-random).
func NewRun(root, kind string) (*Run, error) {
	b := make([]byte, 3)
	rand.Read(b)
	id := fmt.Sprintf("%s-%s-%s", kind, time.Now().UTC().Format("20060102-150405"), hex.EncodeToString(b))
	dir := filepath.Join(root, id)
	if err := os.MkdirAll(filepath.Join(dir, "checkpoints"), 0o755); err != nil {
		return nil, err
	}
	r := &Run{Dir: dir, ID: id}
	return r, r.WriteState(State{ID: id, Kind: kind, State: Queued, Created: time.Now().UTC(), Updated: time.Now().UTC()})
}

// SetOwner names who started the run (a keel serve user): only they may cancel it from their chat.
func (r *Run) SetOwner(name string) error {
	return atomicfile.WriteFile(filepath.Join(r.Dir, "owner"), []byte(name+"\n"))
}

// Owner is who started the run ("" for a run started outside keel serve).
func (r *Run) Owner() string {
	raw, _ := os.ReadFile(filepath.Join(r.Dir, "owner"))
	return strings.TrimSpace(string(raw))
}

// OpenRun finds a run by folder path or by id under root.
func OpenRun(root, ref string) (*Run, error) {
	dir := ref
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err != nil {
		dir = filepath.Join(root, ref)
		if _, err := os.Stat(filepath.Join(dir, "state.json")); err != nil {
			return nil, fmt.Errorf("no run %q (neither a run folder nor an id under %s): `keel jobs list` shows the runs", ref, root)
		}
	}
	return &Run{Dir: dir, ID: filepath.Base(dir)}, nil
}

// WriteState replaces state.json atomically.
func (r *Run) WriteState(s State) error {
	return atomicfile.WriteJSON(filepath.Join(r.Dir, "state.json"), s)
}

// ReadState reads state.json; a running state whose process is gone reads as failed.
func (r *Run) ReadState() (State, error) {
	raw, err := os.ReadFile(filepath.Join(r.Dir, "state.json"))
	if err != nil {
		return State{}, err
	}
	var s State
	if err := json.Unmarshal(raw, &s); err != nil {
		return State{}, fmt.Errorf("%s/state.json: %v", r.Dir, err)
	}
	if (s.State == Running || s.State == Paused) && s.PID > 0 && !s.ownerAlive() {
		s.State = Failed
		if s.Error == "" {
			s.Error = "the training process is gone (killed?): resume it with --resume " + r.Dir
		}
	}
	return s, nil
}

// ownerAlive reports whether the process that wrote the state still runs: the same pid and, when recorded, the
// same start time (after a reboot or pid reuse the pid may name a stranger).
func (s State) ownerAlive() bool {
	start, ok := processStart(s.PID)
	if !ok {
		return false
	}
	return s.PIDStart == 0 || start == s.PIDStart
}

// processStart is a live process's start time from /proc/PID/stat (false when it is gone or a zombie).
func processStart(pid int) (uint64, bool) {
	if syscall.Kill(pid, 0) != nil {
		return 0, false
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, true // no /proc to read: the signal check is all there is
	}
	// The command name may hold spaces and parentheses: the fields after it start past the last ')'.
	rest := string(raw)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	fields := strings.Fields(rest) // state is field 3 of the whole line, start time field 22
	if len(fields) < 20 || fields[0] == "Z" {
		return 0, false
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, true
	}
	return start, true
}

// ListRuns returns every run under root, newest first.
func ListRuns(root string) ([]State, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []State
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		s, err := (&Run{Dir: filepath.Join(root, e.Name()), ID: e.Name()}).ReadState()
		if err == nil {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

// RequestCancel asks the run's process to stop: a cancel file it polls each step, and SIGTERM.
func (r *Run) RequestCancel() error {
	if err := os.WriteFile(filepath.Join(r.Dir, "cancel"), nil, 0o644); err != nil {
		return err
	}
	s, err := r.ReadState()
	if err == nil && s.State == Running && s.PID > 0 && s.PID != os.Getpid() && s.ownerAlive() {
		syscall.Kill(s.PID, syscall.SIGTERM)
	}
	return nil
}

func (r *Run) cancelRequested() bool {
	_, err := os.Stat(filepath.Join(r.Dir, "cancel"))
	return err == nil
}

// RequestPause asks the run's process to hold before its next step (a pause file it polls); the model stays
// loaded, so RequestResume continues the same run where it stopped.
func (r *Run) RequestPause() error {
	s, err := r.ReadState()
	if err != nil {
		return err
	}
	if s.State != Running && s.State != Queued && s.State != Paused {
		return fmt.Errorf("run %s is %s: only a queued or running job pauses", r.ID, s.State)
	}
	return os.WriteFile(filepath.Join(r.Dir, "pause"), nil, 0o644)
}

// RequestResume lets a paused run continue.
func (r *Run) RequestResume() error {
	if err := os.Remove(filepath.Join(r.Dir, "pause")); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

func (r *Run) pauseRequested() bool {
	_, err := os.Stat(filepath.Join(r.Dir, "pause"))
	return err == nil
}

// ReadMetrics reads metrics.jsonl; a torn last line (a killed writer) is skipped.
func (r *Run) ReadMetrics() ([]Metrics, error) {
	f, err := os.Open(filepath.Join(r.Dir, "metrics.jsonl"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	var out []Metrics
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for sc.Scan() {
		var m Metrics
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

// Watch calls fn with every metrics line as it appears and with changes of state or phase, until the run ends or
// ctx does.
func (r *Run) Watch(ctx context.Context, poll time.Duration, fn func(State, *Metrics)) (State, error) {
	seen := 0
	last := ""
	for {
		ms, err := r.ReadMetrics()
		if err != nil {
			return State{}, err
		}
		s, err := r.ReadState()
		if err != nil {
			return State{}, err
		}
		for ; seen < len(ms); seen++ {
			fn(s, &ms[seen])
		}
		if s.State+"\x00"+s.Phase != last {
			fn(s, nil)
			last = s.State + "\x00" + s.Phase
		}
		switch s.State {
		case Done, Failed, Cancelled:
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(poll):
		}
	}
}

// metricsLog appends metrics lines (and mirrors them to CSV).
type metricsLog struct {
	jsonl, csv *os.File
	extras     []string
}

func openMetricsLog(dir string) (*metricsLog, error) {
	j, err := os.OpenFile(filepath.Join(dir, "metrics.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	c, err := os.OpenFile(filepath.Join(dir, "metrics.csv"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		j.Close()
		return nil, err
	}
	return &metricsLog{jsonl: j, csv: c}, nil
}

func (l *metricsLog) write(m Metrics) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := l.jsonl.Write(append(raw, '\n')); err != nil {
		return err
	}
	if st, _ := l.csv.Stat(); st != nil && st.Size() == 0 {
		for k := range m.Extra {
			l.extras = append(l.extras, k)
		}
		sort.Strings(l.extras)
		fmt.Fprintf(l.csv, "step,loss,eval_loss,lr,grad_norm,tokens_per_sec,eta_seconds%s\n", prefixed(l.extras))
	}
	eval := ""
	if m.EvalLoss != nil {
		eval = fmt.Sprint(*m.EvalLoss)
	}
	var extra strings.Builder
	for _, k := range l.extras {
		fmt.Fprintf(&extra, ",%v", m.Extra[k])
	}
	_, err = fmt.Fprintf(l.csv, "%d,%v,%s,%v,%v,%v,%v%s\n", m.Step, m.Loss, eval, m.LR, m.GradNorm, m.TokensPerSec, m.ETASeconds, extra.String())
	return err
}

func prefixed(ks []string) string {
	var sb strings.Builder
	for _, k := range ks {
		sb.WriteString("," + k)
	}
	return sb.String()
}

func (l *metricsLog) sync() { l.jsonl.Sync(); l.csv.Sync() }

func (l *metricsLog) close() { l.jsonl.Close(); l.csv.Close() }

// errCancelled marks a run stopped on request.
var errCancelled = errors.New("cancelled")

// jobCtl is a trainer's bookkeeping shared by every kind of job: state.json, progress events and log lines.
type jobCtl struct {
	run   *Run
	opts  Options
	state State
}

// startJob marks the run as running (writing config.json unless resuming) and clears a stale cancel request.
func startJob(run *Run, kind string, totalSteps int, cfg any, opts Options) (*jobCtl, error) {
	j := &jobCtl{run: run, opts: opts}
	j.state, _ = run.ReadState()
	// One writer per run: ReadState reads a run whose process is gone as failed, so a live owner is still training.
	if st := j.state; (st.State == Running || st.State == Paused) && st.PID > 0 && st.PID != os.Getpid() {
		return nil, fmt.Errorf("run %s is being trained by process %d: wait for it, or stop it with keel jobs cancel %s, then resume", run.ID, st.PID, run.ID)
	}
	j.state.Kind, j.state.State, j.state.PID, j.state.TotalSteps = kind, Running, os.Getpid(), totalSteps
	j.state.PIDStart, _ = processStart(os.Getpid())
	j.state.Error = ""
	if !opts.Resume {
		if err := atomicfile.WriteJSON(filepath.Join(run.Dir, "config.json"), cfg); err != nil {
			return nil, err
		}
	}
	os.Remove(filepath.Join(run.Dir, "cancel"))
	os.Remove(filepath.Join(run.Dir, "pause"))
	j.state.Updated = time.Now().UTC()
	if err := run.WriteState(j.state); err != nil {
		return nil, err
	}
	j.emit(Event{State: Running})
	return j, nil
}

// emit hands an event to an in-process watcher without ever blocking the trainer.
func (j *jobCtl) emit(e Event) {
	if j.opts.Events != nil {
		select {
		case j.opts.Events <- e:
		default:
		}
	}
}

// logf writes a progress line to the log, the watcher and the run's state.
func (j *jobCtl) logf(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	if j.opts.Log != nil {
		fmt.Fprintln(j.opts.Log, msg)
	}
	// A watcher in another process sees the phase in state.json: before the first step (scoring rollouts,
	// fitting a value head) it is all there is to show.
	j.state.Phase, j.state.Updated = msg, time.Now().UTC()
	j.run.WriteState(j.state)
	j.emit(Event{Message: msg})
}

// finish records the run's end state.
func (j *jobCtl) finish(st string, e error) {
	j.state.State, j.state.Updated = st, time.Now().UTC()
	if e != nil {
		j.state.Error = e.Error()
	}
	j.run.WriteState(j.state)
	j.emit(Event{State: st, Message: j.state.Error})
}

// end is deferred by a trainer with its named error: cancellation is a clean stop, anything else a failure.
func (j *jobCtl) end(err *error) {
	switch {
	case *err == errCancelled:
		j.finish(Cancelled, nil)
		*err = nil
	case *err != nil:
		j.finish(Failed, *err)
	}
}

// holdWhilePaused waits, in the paused state, while the run's pause file exists; a cancel request or the end of
// ctx ends the wait (the caller's cancel check follows). It returns how long it held, for the caller's ETA clock.
func (j *jobCtl) holdWhilePaused(ctx context.Context) time.Duration {
	if !j.run.pauseRequested() {
		return 0
	}
	t0 := time.Now()
	j.state.State, j.state.Updated = Paused, t0.UTC()
	j.run.WriteState(j.state)
	j.emit(Event{State: Paused})
	for j.run.pauseRequested() && !j.run.cancelRequested() && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	j.state.State, j.state.Updated = Running, time.Now().UTC()
	j.run.WriteState(j.state)
	j.emit(Event{State: Running})
	return time.Since(t0)
}

// progress records a finished step in state.json.
func (j *jobCtl) progress(step int, loss float64) {
	j.state.Step, j.state.Loss, j.state.Updated = step, loss, time.Now().UTC()
	j.run.WriteState(j.state)
}
