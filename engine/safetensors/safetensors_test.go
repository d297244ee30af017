package safetensors

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	data := make([]byte, 24)
	for i := range data {
		data[i] = byte(i)
	}
	err := Write(path, []Tensor{{Name: "b", DType: "F32", Shape: []int64{2, 3}, Data: data}, {Name: "a", DType: "BF16", Shape: []int64{1}, Data: []byte{1, 2}}}, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, info, err := f.Data("b")
	if err != nil || info.DType != "F32" || len(info.Shape) != 2 || string(got) != string(data) {
		t.Fatalf("read back %v %v %v", info, got, err)
	}
	if f.Header.Metadata["format"] != "pt" {
		t.Fatalf("metadata %v", f.Header.Metadata)
	}
}

func writeRaw(t *testing.T, header string, data int) string {
	path := filepath.Join(t.TempDir(), "x.safetensors")
	b := make([]byte, 8+len(header)+data)
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	copy(b[8:], header)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestBadFilesGiveClearErrors(t *testing.T) {
	cases := map[string]struct {
		header string
		data   int
		want   string
	}{
		"truncated data": {`{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, 8, "outside"},
		"wrong size":     {`{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}`, 16, "needs 16"},
		"garbage header": {`not json at all`, 0, "not a JSON object"},
		"bad dtype":      {`{"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}}`, 4, "unsupported dtype"},
		"negative dim":   {`{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4, "negative"},
		"overlapping":    {`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, 16, "overlap"},
	}
	for name, c := range cases {
		path := writeRaw(t, c.header, c.data)
		_, err := Open(path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: got %v, want an error naming the file and %q", name, err, c.want)
		}
	}
	short := filepath.Join(t.TempDir(), "short.safetensors")
	os.WriteFile(short, []byte{1, 2, 3}, 0o644)
	if _, err := Open(short); err == nil || !strings.Contains(err.Error(), "too short") {
		t.Errorf("short file: %v", err)
	}
	huge := writeRaw(t, "{}", 0)
	b, _ := os.ReadFile(huge)
	binary.LittleEndian.PutUint64(b, 1<<40)
	os.WriteFile(huge, b, 0o644)
	if _, err := Open(huge); err == nil || !strings.Contains(err.Error(), "do not give a header length that fits") {
		t.Errorf("huge header length: %v", err)
	}
	// A JSON file given where tensors go (a capping config) is named as one, with no absurd length.
	jsonFile := filepath.Join(t.TempDir(), "capping.json")
	os.WriteFile(jsonFile, []byte(`{"best": {"id": "layers_3:5-p0.25"}}`), 0o644)
	if _, err := Open(jsonFile); err == nil || !strings.Contains(err.Error(), "is a JSON file, not safetensors") {
		t.Errorf("a JSON file: %v", err)
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add([]byte(`{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"a":"b"}}`), int64(16))
	f.Add([]byte(`{"w":{"dtype":"BF16","shape":[9223372036854775807,4],"data_offsets":[0,2]}}`), int64(2))
	f.Add([]byte(`{}`), int64(0))
	f.Fuzz(func(t *testing.T, raw []byte, dataLen int64) {
		if dataLen < 0 {
			dataLen = -dataLen
		}
		h, err := ParseHeader(raw, dataLen)
		if err != nil {
			return
		}
		for _, info := range h.Tensors {
			if info.Offset[0] < 0 || info.Offset[1] > dataLen || info.Offset[1] < info.Offset[0] {
				t.Fatalf("accepted out-of-range tensor %+v for data length %d", info, dataLen)
			}
		}
	})
}
