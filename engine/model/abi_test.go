package model

import (
	"os"
	"regexp"
	"strconv"
	"testing"
)

// An intervention's Kind is the shim's KT_HOOK_* code: the fused step reads the kinds Go sends by number.
func TestKindsAreTheShimsHookCodes(t *testing.T) {
	raw, err := os.ReadFile("../torch/csrc/keel_torch.h")
	if err != nil {
		t.Fatal(err)
	}
	for name, kind := range map[string]Kind{"CAPTURE": Capture, "ADD": Add, "CAP": Cap} {
		m := regexp.MustCompile(`KT_HOOK_` + name + ` = (\d+)`).FindSubmatch(raw)
		if m == nil {
			t.Fatalf("keel_torch.h has no KT_HOOK_%s", name)
		}
		if v, _ := strconv.Atoi(string(m[1])); Kind(v) != kind {
			t.Fatalf("KT_HOOK_%s is %d, model's kind %d", name, v, kind)
		}
	}
}
