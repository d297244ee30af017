package evals

import (
	"slices"
	"testing"

	"github.com/keel-lab/keel/probes"
)

func TestBestCapAndPareto(t *testing.T) {
	s := []probes.CapSetting{
		{ID: "a", DriftRate: .2, Jailbreak: 1, Capability: .8, DriftReduction: .1, JailbreakReduction: 0},
		{ID: "b", DriftRate: .1, Jailbreak: 1, Capability: .8, DriftReduction: .5, JailbreakReduction: 0},
		{ID: "c", DriftRate: .1, Jailbreak: .4, Capability: .7, DriftReduction: .5, JailbreakReduction: .6, CapabilityChange: -0.12},
		{ID: "d", DriftRate: .15, Jailbreak: .5, Capability: .79, DriftReduction: .3, JailbreakReduction: .5, CapabilityChange: -0.01},
	}
	if b := bestCap(s); b.ID != "d" {
		t.Fatalf("best %s, want d (c loses too much capability)", b.ID)
	}
	if b := bestCap(s[:2]); b.ID != "b" {
		t.Fatalf("best of a tie on the smaller reduction %s, want b (the larger sum)", b.ID)
	}
	markPareto(s)
	var front []string
	for _, c := range s {
		if c.Pareto {
			front = append(front, c.ID)
		}
	}
	if !slices.Equal(front, []string{"b", "c", "d"}) {
		t.Fatalf("Pareto front %v, want b c d (a is beaten by b)", front)
	}
}
