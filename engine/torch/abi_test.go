package torch

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The Go side and the C header agree on the ABI version, and a shim of another version is refused in one line
// naming both and `make setup`.
func TestABIVersion(t *testing.T) {
	raw, err := os.ReadFile("csrc/keel_torch.h")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`#define KT_ABI_VERSION (\d+)`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("keel_torch.h defines no KT_ABI_VERSION")
	}
	if v, _ := strconv.Atoi(string(m[1])); v != ABIVersion {
		t.Fatalf("keel_torch.h says ABI %d, the Go side %d", v, ABIVersion)
	}
	if err := checkABI("/x/libkeeltorch.so", ABIVersion); err != nil {
		t.Fatal(err)
	}
	err = checkABI("/x/libkeeltorch.so", ABIVersion+1)
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "make setup") ||
		!strings.Contains(err.Error(), strconv.Itoa(ABIVersion+1)) || !strings.Contains(err.Error(), strconv.Itoa(ABIVersion)) {
		t.Fatalf("another ABI: %v", err)
	}
}
