package ptfile

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"math"
	"strings"
	"testing"
)

// pickle helpers writing the opcodes torch.save emits (protocol 2).
type pk struct{ bytes.Buffer }

func (p *pk) str(s string) *pk {
	p.WriteByte('X')
	binary.Write(p, binary.LittleEndian, uint32(len(s)))
	p.WriteString(s)
	return p
}
func (p *pk) op(b ...byte) *pk { p.Write(b); return p }
func (p *pk) int(n int) *pk {
	if n >= 0 && n < 256 {
		p.WriteByte('K') // BININT1
		p.WriteByte(byte(n))
		return p
	}
	p.WriteByte('J') // BININT, four bytes
	binary.Write(&p.Buffer, binary.LittleEndian, int32(n))
	return p
}

// tensorPickle emits _rebuild_tensor_v2(storage key, offset, size, stride, False, OrderedDict()).
func (p *pk) tensor(key string, numel int, offset int, size, stride []int) *pk {
	p.WriteString("ctorch._utils\n_rebuild_tensor_v2\n")
	p.op('(', '(')
	p.str("storage").WriteString("ctorch\nFloatStorage\n")
	p.str(key).str("cpu").int(numel)
	p.op('t', 'Q')
	p.int(offset)
	p.op('(')
	for _, d := range size {
		p.int(d)
	}
	p.op('t', '(')
	for _, d := range stride {
		p.int(d)
	}
	p.op('t', 0x89)
	p.WriteString("ccollections\nOrderedDict\n")
	p.op(')', 'R', 't', 'R')
	return p
}

func archive(t testing.TB, pickle []byte, storages map[string][]float32) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("axis/data.pkl")
	w.Write(pickle)
	for key, vals := range storages {
		w, _ := zw.Create("axis/data/" + key)
		for _, v := range vals {
			binary.Write(w, binary.LittleEndian, math.Float32bits(v))
		}
	}
	w, _ = zw.Create("axis/version")
	w.Write([]byte("3\n"))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sample() *pk {
	p := &pk{}
	p.op(0x80, 2, '}', '(')
	p.str("axis").tensor("0", 6, 0, []int{2, 3}, []int{3, 1})
	p.str("axis_t").tensor("0", 6, 0, []int{3, 2}, []int{1, 3})
	p.str("layer").int(5)
	p.str("names").op(']', '(').str("a").str("b").op('e')
	p.op('u', '.')
	return p
}

func TestReadsDictOfTensors(t *testing.T) {
	raw := archive(t, sample().Bytes(), map[string][]float32{"0": {1, 2, 3, 4, 5, 6}})
	v, err := Read(raw, "x.pt")
	if err != nil {
		t.Fatal(err)
	}
	ts := Tensors(v)
	a, at := ts["axis"], ts["axis_t"]
	if a == nil || at == nil {
		t.Fatalf("tensors: %v", Paths(v))
	}
	if a.Shape[0] != 2 || a.Shape[1] != 3 || a.Data[4] != 5 {
		t.Fatalf("axis %+v", a)
	}
	// The transposed view gathers through its strides: row i of axis_t is column i of axis.
	want := []float32{1, 4, 2, 5, 3, 6}
	for i := range want {
		if at.Data[i] != want[i] {
			t.Fatalf("axis_t %v, want %v", at.Data, want)
		}
	}
	d := v.(*Dict)
	if l, _ := d.Get("layer"); l != int64(5) {
		t.Fatalf("layer = %v", l)
	}
	if n, _ := d.Get("names"); len(*n.(*[]any)) != 2 {
		t.Fatalf("names = %v", n)
	}
}

func TestHostileFilesAreRefused(t *testing.T) {
	good := sample().Bytes()
	cases := map[string]struct {
		raw  []byte
		want string
	}{
		"not a zip":        {[]byte("hello"), "not a torch.save zip"},
		"legacy pickle":    {[]byte{0x80, 2, 'N', '.'}, "legacy"},
		"truncated zip":    {archive(t, good, map[string][]float32{"0": {1, 2, 3, 4, 5, 6}})[:100], "not a torch.save zip"},
		"os.system":        {archive(t, []byte("\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R."), nil), "refusing global os.system"},
		"unknown opcode":   {archive(t, []byte{0x80, 2, 'Z', '.'}, nil), "unsupported pickle opcode 0x5a"},
		"missing storage":  {archive(t, good, nil), `storage "0" missing`},
		"short storage":    {archive(t, good, map[string][]float32{"0": {1, 2}}), "truncated archive"},
		"wrong shape":      {archive(t, (&pk{}).op(0x80, 2).tensor("0", 6, 0, []int{4, 3}, []int{3, 1}).op('.').Bytes(), map[string][]float32{"0": {1, 2, 3, 4, 5, 6}}), "reaches past its storage"},
		"truncated pickle": {archive(t, good[:len(good)/2], map[string][]float32{"0": {1, 2, 3, 4, 5, 6}}), "truncated"},
		// A few bytes asking for gigabytes: one element viewed as 16384 x 16384 (stride 0), and a storage claiming
		// 2^27 floats. Both are refused before anything that large is allocated or inflated.
		"stride-0 expansion": {archive(t, (&pk{}).op(0x80, 2).tensor("0", 1, 0, []int{16384, 16384}, []int{0, 0}).op('.').Bytes(), map[string][]float32{"0": {1}}), "more elements than its storage"},
		"huge storage":       {archive(t, (&pk{}).op(0x80, 2).tensor("0", 1<<27, 0, []int{1 << 27}, []int{1}).op('.').Bytes(), map[string][]float32{"0": {1, 2, 3}}), "more than 96 MiB"},
	}
	for name, c := range cases {
		_, err := Read(c.raw, "bad.pt")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "bad.pt") {
			t.Errorf("%s: got %v, want an error naming bad.pt and %q", name, err, c.want)
		}
	}
}

func FuzzRead(f *testing.F) {
	f.Add(archive(f, sample().Bytes(), map[string][]float32{"0": {1, 2, 3, 4, 5, 6}}))
	f.Add(sample().Bytes())
	f.Fuzz(func(t *testing.T, raw []byte) {
		Read(raw, "fuzz.pt") // must not panic or allocate without bound
		// The pickle alone, with storages of whatever size it asks (bounded), exercises the machine directly.
		m := &machine{name: "fuzz", code: raw, storages: map[string][]byte{}, budget: maxFileBytes}
		m.loadStorage = func(key string, limit int64) ([]byte, error) { return make([]byte, min(limit, 1<<16)), nil }
		m.run()
	})
}

func TestWriteReadsBack(t *testing.T) {
	axis := &Tensor{Shape: []int64{2, 3}, Data: []float32{1, -2, 3.5, 4, 5, 6}}
	in := map[string]any{
		"axis":  axis,
		"layer": 40, "big": int64(1) << 40, "neg": -7, "cap": -1.875, "ok": true, "none": nil,
		"experiments": []any{map[string]any{"id": "layers_46:54-p0.25", "interventions": []any{map[string]any{"vector": "v46", "cap": 0.5}}}},
	}
	var buf bytes.Buffer
	if err := Write(&buf, "archive", in); err != nil {
		t.Fatal(err)
	}
	v, err := Read(buf.Bytes(), "w.pt")
	if err != nil {
		t.Fatal(err)
	}
	d := v.(*Dict)
	got := Tensors(v)["axis"]
	if got == nil || got.Shape[0] != 2 || got.Shape[1] != 3 || got.Data[2] != 3.5 || got.Data[1] != -2 {
		t.Fatalf("axis read back as %+v", got)
	}
	for key, want := range map[string]any{"layer": int64(40), "big": int64(1) << 40, "neg": int64(-7), "cap": -1.875, "ok": true, "none": nil} {
		if g, ok := d.Get(key); !ok || g != want {
			t.Errorf("%s read back as %v (%T), want %v", key, g, g, want)
		}
	}
	exps, _ := d.Get("experiments")
	e0 := (*exps.(*[]any))[0].(*Dict)
	if id, _ := e0.Get("id"); id != "layers_46:54-p0.25" {
		t.Fatalf("experiment id %v", id)
	}
	if err := Write(&buf, "x", map[string]any{"f": float32(1)}); err == nil {
		t.Fatal("a float32 scalar was written without complaint")
	}
}
