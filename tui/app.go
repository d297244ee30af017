// Package tui is keel's workbench: chat with a model while its replies are plotted token by token on the
// Assistant Axis, cap or steer it live, fine-tune it in the background and replay recorded sessions.
package tui

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
	"github.com/muesli/termenv"

	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/workbench"
)

// Options configure the app.
type Options struct {
	Session *workbench.Session
	Jobs    workbench.JobRunner // the machine's jobs, listed in the jobs pane (nil: none)
	Styles  Styles
	Keys    KeyMap
	Mouse   bool
	Tint    bool
	// Now stands in for time.Now in tests (fixed tokens/s figures in golden files).
	Now func() time.Time
	// Memory reports the process's resident memory in bytes (nil: /proc/self/statm).
	Memory func() uint64
}

// App is the Bubble Tea model of the main screen.
type App struct {
	opt   Options
	keys  KeyMap
	help  help.Model
	input *editor
	// The screen above the input as last joined, what it was joined from, and its lines (View's cache).
	top, topKey string
	topLines    int
	typed       bool // the message in hand only changed the input
	quitArmed   bool // the last key was a ctrl+c on an empty input: another quits
	panes       int  // counts the messages that may have changed the panes (the chat's included)
	chat        chatModel
	st          Styles
	session     *workbench.Session
	width       int
	height      int

	generating bool
	gen        int                // the generation in flight; messages of a stopped one are dropped
	cancel     context.CancelFunc // ends the reply in flight and its stream
	stream     chan tea.Msg
	genStart   time.Time
	genTokens  int
	firstToken time.Time     // when the reply's first token came
	ttft       time.Duration // time to the first token of the latest reply
	tokPerSec  float64       // the latest reply's decode rate: tokens after the first over the time since it

	showHelp    bool
	commandList string    // /help's list, shown in the chat pane until esc
	plotView    plotModel // the panes with state of their own
	jobsView    jobsModel
	mouse       bool
	tint        bool
	notice      string
	jobs        []*jobView
	replay      *replayState // a recorded session playing over the screen
	replaying   bool         // this app draws a recording's frames (see Frames)
	quitting    bool

	// Rendered panes, refreshed by Update; View only joins them.
	statusLine, plotPane, controlsPane, jobsPane, helpLine string
}

// New makes the app.
func New(opt Options) *App {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Memory == nil {
		opt.Memory = residentMemory
	}
	if opt.Keys.Send.Keys() == nil {
		opt.Keys = DefaultKeyMap()
	}
	if opt.Styles.r == nil {
		opt.Styles = NewStyles(termenv.Ascii)
	}
	ta := newEditor(opt.Styles, opt.Keys.Newline)
	ta.limit = opt.Session.Policy().MaxMessage
	h := help.New()
	h.Styles = opt.Styles.helpStyles()
	h.ShortSeparator, h.FullSeparator = " · ", "   "
	a := &App{opt: opt, session: opt.Session, keys: opt.Keys, help: h, input: ta, chat: newChatModel(), st: opt.Styles,
		mouse: opt.Mouse, tint: opt.Tint, notice: opt.Session.Warning}
	a.resize(80, 24)
	a.noteErr(opt.Session.Note(tintNote, a.tint))
	return a
}

// noteErr shows a failure to record a front-end setting (the chat goes on).
func (a *App) noteErr(err error) {
	if err != nil {
		a.notice = "recording: " + err.Error()
	}
}

// Init implements tea.Model.
func (a *App) Init() tea.Cmd {
	var cmds []tea.Cmd
	if a.mouse {
		cmds = append(cmds, tea.EnableMouseCellMotion)
	}
	return tea.Batch(append(cmds, a.syncJobs())...)
}

// jobsSyncEvery is how often the jobs pane looks for runs it does not know yet.
const jobsSyncEvery = 2 * time.Second

// syncJobs lists the machine's runs off the UI goroutine (their updates come as JobUpdates).
func (a *App) syncJobs() tea.Cmd {
	jobs := a.opt.Jobs
	if jobs == nil {
		return nil
	}
	return func() tea.Msg { return jobsSyncedMsg{jobs.Sync(context.Background())} }
}

// Messages of the app's own commands.
type (
	tokenMsg struct {
		gen int
		t   workbench.Token
	}
	doneMsg struct {
		gen int
		err error
	}
	// slowMsg is a command's slow part (loading a model, starting a job) finished off the UI goroutine.
	slowMsg struct{ res workbench.Result }
	// jobsSyncedMsg is the machine's runs listed (their updates follow as JobUpdates).
	jobsSyncedMsg struct{ err error }
	syncJobsMsg   struct{}
)

// waitStream reads the next message of a generation.
func waitStream(ch chan tea.Msg) tea.Cmd {
	return func() tea.Msg { return <-ch }
}

// Update implements tea.Model.
func (a *App) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	a.typed = false
	cmd := a.update(msg)
	if !a.typed { // a key the input took changes nothing the panes show
		a.refresh()
		a.panes++
	}
	return a, cmd
}

func (a *App) update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		if msg.Width != a.width || msg.Height != a.height {
			a.noteErr(a.session.Note(termNote, sessions.Term{Cols: msg.Width, Rows: msg.Height}))
		}
		a.resize(msg.Width, msg.Height)
		if a.replay != nil { // the frames are redrawn at the new size, at the same place
			return a.startReplay(a.replay.path, a.replay)
		}
		return nil
	case tokenMsg:
		if msg.gen != a.gen || !a.generating {
			return nil // a stopped reply's last tokens: its goroutine is winding down
		}
		a.appendToken(msg.t)
		return waitStream(a.stream)
	case doneMsg:
		if msg.gen == a.gen && a.generating {
			a.finishGeneration(msg.err)
		}
		return nil
	case workbench.JobUpdate:
		a.jobUpdate(msg)
		return nil
	case jobsSyncedMsg:
		if msg.err != nil {
			a.notice = "listing the jobs: " + msg.err.Error()
		}
		// Runs started by other processes (keel train --detach, another chat) appear within a couple of seconds.
		return tea.Tick(jobsSyncEvery, func(time.Time) tea.Msg { return syncJobsMsg{} })
	case syncJobsMsg:
		return a.syncJobs()
	case slowMsg:
		return a.result(msg.res)
	case replayReadyMsg:
		return a.replayReady(msg)
	case replayTickMsg:
		return a.replayTick(msg)
	case tea.MouseMsg:
		if msg.Button == tea.MouseButtonWheelUp {
			a.chat.ScrollUp(3)
		} else if msg.Button == tea.MouseButtonWheelDown {
			a.chat.ScrollDown(3)
		}
		return nil
	case tea.KeyMsg:
		return a.key(msg)
	}
	return nil
}

func (a *App) key(msg tea.KeyMsg) tea.Cmd {
	k := a.keys
	armed := a.quitArmed
	a.quitArmed = false // only the very next key confirms a quit
	switch {
	case key.Matches(msg, k.Quit) && a.input.Empty() && a.replay == nil:
		a.quitting = true
		return tea.Quit
	case key.Matches(msg, k.Interrupt):
		if a.generating {
			a.stop()
			return nil
		}
		if !a.input.Empty() { // as a shell does: the first ctrl+c drops the draft
			a.input.Reset()
			a.notice = "draft cleared: ctrl+c again quits"
			return nil
		}
		if a.replay != nil {
			a.replay = nil
			a.notice = "left the replay"
			a.rerenderChat()
			return nil
		}
		// A ctrl+c meant for a reply that ended a moment earlier must not close the chat: quitting takes a second
		// press (or ctrl+d).
		if !armed {
			a.quitArmed = true
			a.notice = "ctrl+c again (or ctrl+d) quits"
			return nil
		}
		a.quitting = true
		return tea.Quit
	case key.Matches(msg, k.Escape):
		switch {
		case a.showHelp || a.chat.commandList != "":
			a.showHelp, a.chat.commandList = false, ""
			a.resize(a.width, a.height)
		case a.generating:
			a.stop()
		case a.replay != nil:
			a.replay = nil
			a.rerenderChat()
		case a.jobsView.open:
			a.jobsView.open = false
			a.resize(a.width, a.height)
		}
		return nil
	case a.replay != nil && a.replayKey(msg):
		return nil
	case key.Matches(msg, k.Help) && a.input.Empty():
		a.showHelp = !a.showHelp
		a.resize(a.width, a.height)
		return nil
	case key.Matches(msg, k.ToggleCap):
		return a.runCommand("/cap toggle")
	case key.Matches(msg, k.ToggleStr):
		return a.runCommand("/steer toggle")
	case key.Matches(msg, k.LayerUp):
		return a.runCommand("/layer " + strconv.Itoa(a.session.Controls().Layer+1))
	case key.Matches(msg, k.LayerDown):
		return a.runCommand("/layer " + strconv.Itoa(a.session.Controls().Layer-1))
	case key.Matches(msg, k.Jobs):
		a.jobsView.open = !a.jobsView.open
		a.resize(a.width, a.height)
		return nil
	case key.Matches(msg, k.Mouse):
		return a.toggleMouse()
	case key.Matches(msg, k.ScrollUp):
		a.chat.HalfPageUp()
		return nil
	case key.Matches(msg, k.ScrollDown):
		a.chat.HalfPageDown()
		return nil
	case key.Matches(msg, k.Redraw):
		a.chat.invalidate()
		a.rerenderChat()
		return tea.ClearScreen
	case key.Matches(msg, k.PlotMode):
		if a.plotView.turns {
			return a.runCommand("/plot tokens")
		}
		return a.runCommand("/plot turns")
	case key.Matches(msg, k.PanBack):
		a.plotView.offset += max(1, a.sideWidth()/2)
		return nil
	case key.Matches(msg, k.PanFwd):
		a.plotView.offset = max(0, a.plotView.offset-max(1, a.sideWidth()/2))
		return nil
	case key.Matches(msg, k.Send):
		text := strings.TrimSpace(a.input.Value())
		if text == "" {
			return nil
		}
		a.input.Reset()
		if strings.HasPrefix(text, "/") {
			return a.runCommand(text)
		}
		if a.generating {
			a.notice = "a reply is still streaming: ctrl+c stops it"
			a.input.SetValue(text)
			return nil
		}
		return a.send(text)
	}
	a.typed = a.input.Update(msg)
	if a.typed && a.input.dropped {
		a.typed, a.input.dropped = false, false
		a.notice = fmt.Sprintf("a message holds at most %d characters: the rest was not typed", a.input.limit)
	}
	return nil
}

func (a *App) toggleMouse() tea.Cmd {
	a.mouse = !a.mouse
	if a.mouse {
		a.notice = "mouse on: the wheel scrolls the chat (hold shift to select text)"
		return tea.EnableMouseCellMotion
	}
	a.notice = "mouse off"
	return tea.DisableMouse
}

// send starts a reply to a user message, off the UI goroutine.
func (a *App) send(text string) tea.Cmd {
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := a.session.Start(ctx, text)
	if err != nil {
		cancel()
		a.notice = err.Error()
		a.input.SetValue(text)
		return nil
	}
	a.notice = ""
	a.generating, a.cancel = true, cancel
	a.gen++
	a.genStart, a.genTokens, a.ttft, a.tokPerSec = a.opt.Now(), 0, 0, 0
	ch := make(chan tea.Msg, 256)
	a.stream = ch
	gen := a.gen
	go func() {
		defer cancel()
		_, err := stream(func(t workbench.Token) {
			select {
			case ch <- tokenMsg{gen, t}:
			case <-ctx.Done(): // stopped: nobody reads any more
			}
		})
		select {
		case ch <- doneMsg{gen, err}:
		case <-ctx.Done():
		}
	}()
	a.rerenderChat()
	return waitStream(ch)
}

// appendToken counts a streamed token: the wait for the first is the time to first token (the prompt's prefill
// and the queue), the tokens after it over the time since it are the decode rate.
func (a *App) appendToken(workbench.Token) {
	now := a.opt.Now()
	a.genTokens++
	if a.genTokens == 1 {
		a.firstToken, a.ttft = now, now.Sub(a.genStart)
	} else if dt := now.Sub(a.firstToken).Seconds(); dt > 0 {
		a.tokPerSec = float64(a.genTokens-1) / dt
	}
	a.rerenderChat()
}

// stop ends the reply in flight at once: the text so far stays, later tokens are dropped.
func (a *App) stop() {
	a.cancel()
	a.generating = false
	a.notice = "stopped"
	a.rerenderChat()
}

func (a *App) finishGeneration(err error) {
	a.generating = false
	switch {
	case workbench.IsContextLimit(err):
		a.notice = err.Error()
	case err != nil:
		a.notice = "generation failed: " + err.Error()
	}
	a.rerenderChat()
}

// resize lays the panes out for a terminal size.
func (a *App) resize(w, h int) {
	a.width, a.height = min(max(w, 20), maxTerm), min(max(h, 8), maxTerm) // a claimed size past any screen is cut
	a.help.Width = a.width
	a.input.SetWidth(a.width - 2)
	cw, ch := a.chatSize()
	a.chat.Width, a.chat.Height = cw, ch
	a.chat.invalidate()
	a.rerenderChat()
}

// wide is the side-by-side layout (chat left, plot and controls right).
func (a *App) wide() bool { return a.width >= 100 }

func (a *App) sideWidth() int { return min(64, a.width*2/5) }

func (a *App) bodyHeight() int {
	h := a.height - 1 /*status*/ - 3 /*input*/ - 1 /*notice*/ - 1 /*help*/
	if a.showHelp {
		h -= 6 // the full help is 7 lines, the short one 1
	}
	return max(h, 4)
}

func (a *App) chatSize() (int, int) {
	if a.wide() {
		return a.width - a.sideWidth() - 1, a.bodyHeight() - 1
	}
	return a.width, max(3, a.bodyHeight()/2-1)
}

func (a *App) rerenderChat() {
	a.panes++
	a.chat.draw(a.session.Turns(), a.generating, a.renderTurn)
}

func (a *App) renderTurn(t *workbench.Turn) string {
	var label string
	switch t.Role {
	case "user":
		label = a.st.User.Render("you")
	case "assistant":
		label = a.st.Assistant.Render("model")
	default:
		label = a.st.Dim.Render(t.Role)
	}
	var body string
	if t.Role == "assistant" && a.tint && len(t.Tokens) > 0 {
		thr, top := a.session.Scale(a.session.Controls().Layer)
		body = a.st.TintAll(t.Tokens, thr, top)
	} else {
		body = terminalText(t.Text)
	}
	if t.Role == "assistant" && body == "" && a.generating {
		body = a.st.Dim.Render("…")
	}
	if t.Stopped {
		body += " " + a.st.Dim.Render("[stopped]")
	}
	if t.Dropped { // shown, no longer read by the model
		label, body = a.st.Dim.Render("["+t.Role+", out of context]"), a.st.Dim.Render(terminalText(t.Text))
	}
	return a.st.r.NewStyle().Width(a.chat.Width).Render(label+" "+body) + "\n\n"
}

// refresh renders every pane but the chat viewport (already set) from the state.
func (a *App) refresh() {
	info := a.session.Info()
	parts := []string{a.st.Title.Render(" keel ")}
	if a.replaying {
		parts = append(parts, a.st.Rec.Render("replay"))
	}
	parts = append(parts, shortModel(info.Model), info.Device+" "+info.DType, fmt.Sprintf("%d layers", info.Layers))
	if info.AxisRelation != "" {
		parts = append(parts, info.AxisRelation)
	}
	switch {
	case a.generating:
		parts = append(parts, a.st.Active.Render("generating"))
	case !a.replaying:
		parts = append(parts, a.st.Dim.Render("ready"))
	}
	// The interventions in force come before the readouts: a narrow terminal cuts the line from its end.
	if iv := a.session.Controls().Summary(); iv != "" {
		parts = append(parts, a.st.Active.Render(iv))
	}
	if !a.replaying { // a replayed frame shows what was recorded, not this process's speed or memory
		if used, window := a.session.Context(); window > 0 {
			parts = append(parts, fmt.Sprintf("ctx %d/%d", used, window))
		}
		if a.ttft > 0 { // the wait for the first token apart from the decode rate after it
			parts = append(parts, fmt.Sprintf("ttft %s · %.1f tok/s", a.ttft.Round(time.Millisecond), a.tokPerSec))
		}
		parts = append(parts, fmt.Sprintf("RSS %d MiB", a.opt.Memory()>>20))
		if alloc, reserved, ok := a.session.GPUMemory(); ok {
			parts = append(parts, fmt.Sprintf("GPU %.1f/%.1f GiB", float64(alloc)/(1<<30), float64(reserved)/(1<<30)))
		}
	}
	if info.Recording != "" {
		parts = append(parts, a.st.Rec.Render("● rec"))
	}
	a.statusLine = truncate(strings.Join(parts, a.st.Dim.Render(" │ ")), a.width)
	a.controlsPane = a.renderControls()
	side := a.width
	if a.wide() {
		side = a.sideWidth()
	}
	plotH := 8
	if a.wide() {
		plotH = max(4, min(14, a.bodyHeight()-len(strings.Split(a.controlsPane, "\n"))-a.jobsView.height(a.bodyHeight())-6))
	}
	a.plotPane = a.plotView.view(a.session, a.st, side-10, plotH)
	a.jobsPane = a.jobsView.view(a.st, side)
	if a.showHelp {
		a.help.ShowAll = true
	} else {
		a.help.ShowAll = false
	}
	a.helpLine = a.help.View(a.keys)
}

func shortModel(dir string) string {
	dir = strings.TrimRight(dir, "/")
	if i := strings.LastIndex(dir, "/"); i >= 0 {
		return dir[i+1:]
	}
	return dir
}

// truncate cuts a line to w cells (escape sequences kept intact).
func truncate(s string, w int) string {
	if lipgloss.Width(s) <= w {
		return s
	}
	return ansi.Truncate(s, w, "…")
}

func (a *App) renderControls() string {
	c, info, sampling := a.session.Controls(), a.session.Info(), a.session.Sampling()
	onOff := func(b bool) string {
		if b {
			return a.st.Active.Render("on ")
		}
		return a.st.Dim.Render("off")
	}
	lines := []string{
		a.st.Title.Render(" controls "),
		fmt.Sprintf("cap   %s  %s  layers %d:%d", onOff(c.CapOn), probes.PercentileName(c.Cap.P), c.Cap.Window[0], c.Cap.Window[1]),
		fmt.Sprintf("steer %s  c %+.2f  layer %d", onOff(c.SteerOn), c.SteerCoeff, c.SteerLayer),
		fmt.Sprintf("plot  layer %d of %d   T %.2g top-p %.2g", c.Layer, info.Layers, sampling.Temperature, sampling.TopP),
	}
	if info.Axis == "" {
		lines = append(lines, a.st.Dim.Render("no axis: /axis DIR to plot and cap"))
	}
	return strings.Join(lines, "\n")
}

// View implements tea.Model: it only joins the rendered panes. The panes above the input are joined once per
// change of theirs, so a key typed into the input costs what the input's own rows cost to draw.
func (a *App) View() string {
	if a.quitting {
		return ""
	}
	if a.replay != nil {
		return a.replay.view(a)
	}
	top, used := a.screenTop()
	bottom := strings.Split(a.input.View()+"\n"+a.helpLine, "\n")
	bottom = bottom[:min(len(bottom), max(0, a.height-used))]
	for i, l := range bottom {
		bottom[i] = ansi.Truncate(l, a.width, "")
	}
	if len(bottom) == 0 {
		return top
	}
	return top + "\n" + strings.Join(bottom, "\n")
}

// screenTop is the status line, the panes and the notice, joined and cut to the screen, and its line count;
// it is joined again only when one of them changed.
func (a *App) screenTop() (string, int) {
	key := strings.Join([]string{a.statusLine, a.plotPane, a.controlsPane, a.jobsPane, a.notice,
		fmt.Sprint(a.panes, a.width, a.height, a.chat.Width, a.chat.Height, a.bodyHeight())}, "\x00")
	if key == a.topKey {
		return a.top, a.topLines
	}
	chatView := a.chat.View()
	var body string
	chatBox := lipgloss.JoinVertical(lipgloss.Left, a.st.Title.Render(" chat "), chatView)
	if a.wide() {
		side := lipgloss.JoinVertical(lipgloss.Left, a.plotPane, a.controlsPane, a.jobsPane)
		side = a.st.r.NewStyle().Width(a.sideWidth()).MaxHeight(a.bodyHeight()).Render(side)
		body = lipgloss.JoinHorizontal(lipgloss.Top, a.st.r.NewStyle().Width(a.chat.Width+1).Render(chatBox), side)
	} else {
		rest := a.st.r.NewStyle().MaxHeight(a.bodyHeight() - a.chat.Height - 1).Render(lipgloss.JoinVertical(lipgloss.Left, a.plotPane, a.controlsPane, a.jobsPane))
		body = lipgloss.JoinVertical(lipgloss.Left, chatBox, rest)
	}
	body = a.st.r.NewStyle().Height(a.bodyHeight()).MaxHeight(a.bodyHeight()).Render(body)
	notice := a.st.Notice.Render(truncate(a.notice, a.width))
	screen := lipgloss.JoinVertical(lipgloss.Left, a.statusLine, body, notice)
	a.top = a.st.r.NewStyle().MaxWidth(a.width).MaxHeight(a.height).Render(screen)
	a.topKey, a.topLines = key, strings.Count(a.top, "\n")+1
	return a.top, a.topLines
}

// residentMemory reads the process's resident set size from /proc (0 where there is none).
func residentMemory() uint64 {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(raw))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}
