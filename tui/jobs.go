package tui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/progress"

	"github.com/keel-lab/keel/train"
	"github.com/keel-lab/keel/workbench"
)

type jobView struct {
	workbench.JobUpdate
	losses []float64
	extra  map[string]float64   // the latest value of each trainer figure (some are measured only now and then)
	series map[string][]float64 // each plotted trainer figure, step by step
}

// plottedExtras are the trainer figures the open jobs pane plots under the loss.
var plottedExtras = [][2]string{{"reward_mean", "R"}, {"val_reward", "val R"}, {"ref_kl", "KL"}}

func finished(state string) bool {
	return state == train.Done || state == train.Failed || state == train.Cancelled
}

// jobsModel is the jobs pane: every run on the machine with its progress, phase and figures.
type jobsModel struct {
	jobs []*jobView
	open bool // the whole pane (ctrl+o); closed, it shows the last two jobs
}

// update takes a job's progress. It reports whether the change belongs in the chat's recording (a job that
// started, or changed state, during the chat) and the line to show, if any.
func (m *jobsModel) update(u workbench.JobUpdate) (record bool, notice string) {
	var j *jobView
	for _, v := range m.jobs {
		if v.ID == u.ID {
			j = v
		}
	}
	if j == nil {
		j = &jobView{JobUpdate: u, extra: map[string]float64{}, series: map[string][]float64{}}
		m.jobs = append(m.jobs, j)
		record = !finished(u.State) // a run that ended before this chat began is listed, not recorded
	} else if u.State != j.State {
		record = true
		if u.State == train.Done {
			notice = fmt.Sprintf("job %s done: /load %s loads its model into the chat", u.ID, u.ID)
		} else if u.State == train.Failed {
			notice = fmt.Sprintf("job %s failed: %s", u.ID, u.Error)
		}
	}
	if u.Step > j.Step && u.Loss != 0 {
		j.losses = append(j.losses, u.Loss)
	}
	if u.Step > j.Step {
		for _, x := range plottedExtras {
			if v, ok := u.Extra[x[0]]; ok {
				j.series[x[0]] = append(j.series[x[0]], v)
			}
		}
	}
	j.JobUpdate = u
	for k, v := range u.Extra {
		j.extra[k] = v
	}
	return record, notice
}

// jobUpdate hands a job's progress to the jobs pane and records what the pane says belongs in the recording.
func (a *App) jobUpdate(u workbench.JobUpdate) {
	record, notice := a.jobsView.update(u)
	if record {
		a.recordJob(u)
	}
	if notice != "" {
		a.notice = notice
	}
}

// recordJob puts a job's change of state into the session recording.
func (a *App) recordJob(u workbench.JobUpdate) {
	if err := a.session.RecordJob(u); err != nil {
		a.notice = "recording the job event: " + err.Error()
	}
}

// extraLabels are the trainer figures the jobs pane shows, in order, with their short names.
var extraLabels = [][2]string{{"reward_mean", "R"}, {"advantage_mean", "A"}, {"positive_fraction", "A>0"}, {"importance_weight_mean", "rho"},
	{"clip_fraction", "clipped"}, {"val_reward", "val R"}, {"ref_kl", "KL"}, {"approx_kl", "approx KL"}, {"response_length", "len"}, {"perplexity", "ppl"}}

// extraLines is a job's trainer figures, wrapped to width (none when it has none).
func (j *jobView) extraLines(width int) []string {
	var lines []string
	cur := ""
	for _, l := range extraLabels {
		v, ok := j.extra[l[0]]
		if !ok {
			continue
		}
		part := fmt.Sprintf("%s %.3f", l[1], v)
		switch {
		case cur == "":
			cur = part
		case len(cur)+3+len(part) <= width:
			cur += " · " + part
		default:
			lines = append(lines, cur)
			cur = part
		}
	}
	if cur != "" {
		lines = append(lines, cur)
	}
	return lines
}

// height is the rows the pane takes in a body of the given height.
func (m *jobsModel) height(body int) int {
	if m.open {
		return max(4, body/3)
	}
	return 2*min(len(m.jobs), 2) + 1
}

// sparkline draws values as block characters, lowest to highest.
func sparkline(xs []float64, width int) string {
	if len(xs) > width {
		xs = xs[len(xs)-width:]
	}
	if len(xs) == 0 {
		return ""
	}
	lo, hi := xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	bars := []rune("▁▂▃▄▅▆▇█")
	var b strings.Builder
	for _, x := range xs {
		i := 0
		if hi > lo {
			i = int((x - lo) / (hi - lo) * float64(len(bars)-1))
		}
		b.WriteRune(bars[i])
	}
	return b.String()
}

// view draws the pane at a width.
func (m *jobsModel) view(st Styles, width int) string {
	title := st.Title.Render(" jobs ")
	if len(m.jobs) == 0 {
		return title + " " + st.Dim.Render("none: /train sft --data FILE --steps N")
	}
	barWidth := max(10, width-8)
	bar := progress.New(progress.WithWidth(barWidth), progress.WithoutPercentage(), progress.WithSolidFill("#5f87ff"))
	lines := []string{title}
	shown := m.jobs
	if !m.open && len(shown) > 2 {
		shown = shown[len(shown)-2:]
	}
	for _, j := range shown {
		frac := 0.0
		if j.Total > 0 {
			frac = float64(j.Step) / float64(j.Total)
		}
		name := j.ID
		if j.Owner != "" { // a shared machine's job: whose it is
			name += " (" + j.Owner + ")"
		}
		line := fmt.Sprintf("%s %s %d/%d loss %.3f", name, j.State, j.Step, j.Total, j.Loss)
		preparing := j.Step == 0 && j.Phase != "" && !finished(j.State)
		if preparing {
			line = name + " " + j.State
		}
		if j.State == train.Running && j.ETA > 0 {
			line += " ETA " + j.ETA.Round(time.Second).String()
		}
		barText := bar.ViewAs(frac)
		if st.plain {
			n := int(frac * float64(barWidth-2))
			barText = "[" + strings.Repeat("#", n) + strings.Repeat(".", barWidth-2-n) + "]"
		}
		lines = append(lines, truncate(line, width))
		if preparing { // before the first step the trainer's phase is the progress (scoring, fitting a value head)
			lines = append(lines, "  "+truncate(j.Phase, width-2))
		} else {
			lines = append(lines, "  "+barText)
		}
		if m.open {
			lines = append(lines, "  loss "+sparkline(j.losses, width-9))
			for _, x := range plottedExtras {
				if len(j.series[x[0]]) > 1 {
					lines = append(lines, fmt.Sprintf("  %-5s%s", x[1], sparkline(j.series[x[0]], width-9)))
				}
			}
			for _, x := range j.extraLines(width - 2) {
				lines = append(lines, "  "+truncate(x, width-2))
			}
		}
	}
	if m.open {
		lines = append(lines, st.Dim.Render("/cancel ID stops a job · /load ID chats with its model"))
	}
	return strings.Join(lines, "\n")
}
