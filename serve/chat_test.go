package serve

import (
	"context"
	"math"
	"path/filepath"
	"testing"

	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/sessions"
	"github.com/keel-lab/keel/workbench"
)

// A workbench chat whose turns are rows of the scheduler's batch answers as the same chat on a model of its own
// (greedy, capping on: the same text, projections and caps), and a control changed mid-reply acts on the row's
// next steps, as it does on a model of the chat's own.
func TestWorkbenchChatOnTheScheduler(t *testing.T) {
	ts := newTestServer(t, false, 4)
	ts.start()
	lm, axis := ts.sched.Model(), ts.sched.Axis()
	greedy := workbench.Sampling{Temperature: 0, TopP: 1, MaxTokens: 40}
	msgs := []tokenizer.Message{{Role: "user", Content: "Who are you?"}}
	dir := t.TempDir()
	open := func(name string, gen workbench.Generator) *workbench.LMBackend {
		b, err := workbench.NewSharedBackend(lm, axis, workbench.LMConfig{Device: "cpu", DType: "f32", Record: true,
			RecordPath: filepath.Join(dir, name+".jsonl"), Sampling: greedy}, gen)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	capOn := workbench.StartControls(open("probe", workbench.Alone(lm)).Info())
	capOn.CapOn = true
	replies := map[string][]workbench.Token{}
	for name, gen := range map[string]workbench.Generator{"alone": workbench.Alone(lm), "served": ts.sched.Generator("")} {
		b := open(name, gen)
		if err := b.Apply(capOn); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Generate(context.Background(), msgs, greedy, func(tok workbench.Token) { replies[name] = append(replies[name], tok) }); err != nil {
			t.Fatal(err)
		}
	}
	alone, served := replies["alone"], replies["served"]
	if len(alone) != len(served) || len(alone) < 10 {
		t.Fatalf("alone %d tokens, served %d", len(alone), len(served))
	}
	capped := 0
	for i := range alone {
		a, s := alone[i], served[i]
		if a.Text != s.Text || a.Capped != s.Capped || !a.HasProj || !s.HasProj || math.Abs(a.Proj-s.Proj) > 1e-3 {
			t.Fatalf("token %d: alone %+v, served %+v", i, a, s)
		}
		if a.Capped {
			capped++
		}
	}
	if capped == 0 {
		t.Fatalf("no token was capped: the comparison would not see a cap served wrong")
	}

	// Capping switched on at the reply's third token: the recording's first tokens have no cap records, its last
	// ones do.
	b := open("live", ts.sched.Generator(""))
	n := 0
	_, err := b.Generate(context.Background(), msgs, greedy, func(workbench.Token) {
		if n++; n == 3 {
			if err := b.Apply(capOn); err != nil {
				t.Error(err)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	s, err := sessions.Load(filepath.Join(dir, "live.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var caps []int
	for _, e := range s.Events {
		if e.Type == sessions.Token && e.Role == "" && e.ID != 0 {
			caps = append(caps, len(e.Caps))
		}
	}
	if len(caps) < 10 || caps[0] != 0 || caps[len(caps)-1] == 0 {
		t.Fatalf("cap records per token, capping switched on at the third: %v", caps)
	}
}
