package evals

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/keel-lab/keel/engine/tokenizer"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/train"
)

func personaSamples() []train.Sample {
	q := []tokenizer.Message{{Role: "user", Content: "What is 7 plus 5?"}}
	return []train.Sample{
		{Messages: q, Response: "Certainly. 7 plus 5 is 12. I hope this helps.", Answer: "12"},
		{Messages: q, Response: "Arr, 7 plus 5 be 13, matey! Hoist the sails!", Answer: "12"},
	}
}

func rewardNames(t *testing.T) (*probes.Scorer, train.RewardNames) {
	p, err := probes.LoadPersonas()
	if err != nil {
		t.Fatal(err)
	}
	sc := probes.NewScorer(p)
	return sc, Rewards(sc, nil)
}

func TestExactStyleAndWeightedRewards(t *testing.T) {
	sc, names := rewardNames(t)
	r, err := train.ParseReward("0.5*exact + 2*style:pirate", names)
	if err != nil {
		t.Fatal(err)
	}
	got, err := train.ScoreChecked(context.Background(), r, personaSamples())
	if err != nil {
		t.Fatal(err)
	}
	want0 := 0.5*1 + 2*math.Min(1, sc.Of(personaSamples()[0].Response, "pirate").Score)
	want1 := 0.5*0 + 2*math.Min(1, sc.Of(personaSamples()[1].Response, "pirate").Score)
	if math.Abs(got[0]-want0) > 1e-12 || math.Abs(got[1]-want1) > 1e-12 || got[1] <= got[0]-0.5 {
		t.Fatalf("scores %v, want %v %v", got, want0, want1)
	}
	if r.Name() != "0.5*exact+2*style:pirate" {
		t.Fatalf("name %q", r.Name())
	}
	for spec, want := range map[string]string{
		"style:plumber": "unknown role",
		"axis":          "--axis",
		"2x*exact":      "not a weight",
		"bleu":          "is not one of axis, exact, style",
	} {
		if _, err := train.ParseReward(spec, names); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", spec, err, want)
		}
	}
	if _, err := train.ScoreChecked(context.Background(), ExactReward{}, []train.Sample{{Response: "12"}}); err == nil {
		t.Fatal("exact reward without answers")
	}
}
