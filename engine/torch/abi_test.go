package torch

import (
	"os"
	"reflect"
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

// The Go mirror of kt_decoder_config has the C struct's size and order: 13 eight-byte fields, a pointer, then 6
// doubles, each where the header declares it.
func TestDecoderConfigLayout(t *testing.T) {
	raw, err := os.ReadFile("csrc/keel_torch.h")
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile(`(?s)typedef struct \{(.*?)\} kt_decoder_config;`).FindSubmatch(raw)
	if body == nil {
		t.Fatal("keel_torch.h declares no kt_decoder_config")
	}
	var cFields []string
	for _, m := range regexp.MustCompile(`(?m)^\s*(?:const )?(?:int64_t|double)\s*\*?\s*(\w+);`).FindAllSubmatch(body[1], -1) {
		cFields = append(cFields, strings.ReplaceAll(string(m[1]), "_", ""))
	}
	typ := reflect.TypeOf(cDecoderConfig{})
	if typ.NumField() != len(cFields) || typ.Size() != uintptr(8*len(cFields)) {
		t.Fatalf("Go %d fields (%d bytes), C %d fields %v", typ.NumField(), typ.Size(), len(cFields), cFields)
	}
	for i := range cFields {
		if g := strings.ToLower(typ.Field(i).Name); g != cFields[i] {
			t.Fatalf("field %d: Go %s, C %s", i, typ.Field(i).Name, cFields[i])
		}
	}
}
