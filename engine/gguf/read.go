package gguf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
)

func f32bits(f float32) uint32 { return math.Float32bits(f) }
func f64bits(f float64) uint64 { return math.Float64bits(f) }

var errShort = errors.New("unexpected end of file (truncated?)")

// limits on what a file may claim, so a corrupt header cannot make the reader allocate without bound
const (
	maxKV      = 1 << 20
	maxTensors = 1 << 20
	maxString  = 1 << 28
	maxArray   = 1 << 28
	maxDims    = 8
)

type reader struct {
	b   []byte
	pos int
}

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || r.pos+n > len(r.b) || r.pos+n < r.pos {
		return nil, errShort
	}
	s := r.b[r.pos : r.pos+n]
	r.pos += n
	return s, nil
}

func (r *reader) u32() (uint32, error) {
	b, err := r.take(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (r *reader) u64() (uint64, error) {
	b, err := r.take(8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (r *reader) str() (string, error) {
	n, err := r.u64()
	if err != nil {
		return "", err
	}
	if n > maxString {
		return "", fmt.Errorf("string of %d bytes is implausible", n)
	}
	b, err := r.take(int(n))
	return string(b), err
}

func (r *reader) value(t uint32) (any, error) {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		b, err := r.take(1)
		if err != nil {
			return nil, err
		}
		switch t {
		case TypeUint8:
			return b[0], nil
		case TypeInt8:
			return int8(b[0]), nil
		}
		return b[0] != 0, nil
	case TypeUint16, TypeInt16:
		b, err := r.take(2)
		if err != nil {
			return nil, err
		}
		v := binary.LittleEndian.Uint16(b)
		if t == TypeInt16 {
			return int16(v), nil
		}
		return v, nil
	case TypeUint32, TypeInt32, TypeFloat32:
		v, err := r.u32()
		switch t {
		case TypeInt32:
			return int32(v), err
		case TypeFloat32:
			return math.Float32frombits(v), err
		}
		return v, err
	case TypeUint64, TypeInt64, TypeFloat64:
		v, err := r.u64()
		switch t {
		case TypeInt64:
			return int64(v), err
		case TypeFloat64:
			return math.Float64frombits(v), err
		}
		return v, err
	case TypeString:
		return r.str()
	case TypeArray:
		et, err := r.u32()
		if err != nil {
			return nil, err
		}
		n, err := r.u64()
		if err != nil {
			return nil, err
		}
		if n > maxArray || n > uint64(len(r.b)-r.pos) {
			return nil, fmt.Errorf("array of %d elements does not fit the file", n)
		}
		switch et {
		case TypeString:
			out := make([]string, n)
			for i := range out {
				if out[i], err = r.str(); err != nil {
					return nil, err
				}
			}
			return out, nil
		case TypeFloat32:
			out := make([]float32, n)
			for i := range out {
				v, err := r.u32()
				if err != nil {
					return nil, err
				}
				out[i] = math.Float32frombits(v)
			}
			return out, nil
		case TypeInt32, TypeUint32:
			out := make([]int32, n)
			for i := range out {
				v, err := r.u32()
				if err != nil {
					return nil, err
				}
				out[i] = int32(v)
			}
			return out, nil
		default:
			out := make([]any, n)
			for i := range out {
				if out[i], err = r.value(et); err != nil {
					return nil, err
				}
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("unknown value type %d", t)
}

// Parse reads a GGUF file from memory. It checks every count, size and offset against the data it has, so a
// truncated or corrupted file is an error, never a panic.
func Parse(b []byte) (*File, error) {
	r := &reader{b: b}
	m, err := r.u32()
	if err != nil || m != magic {
		return nil, fmt.Errorf("not a GGUF file (bad magic)")
	}
	f := &File{}
	if f.Version, err = r.u32(); err != nil {
		return nil, err
	}
	if f.Version != 2 && f.Version != 3 {
		return nil, fmt.Errorf("GGUF version %d is not supported (2 or 3)", f.Version)
	}
	nt, err := r.u64()
	if err != nil {
		return nil, err
	}
	nkv, err := r.u64()
	if err != nil {
		return nil, err
	}
	if nt > maxTensors || nkv > maxKV {
		return nil, fmt.Errorf("header claims %d tensors and %d metadata entries: corrupt", nt, nkv)
	}
	align := uint64(alignment)
	for i := uint64(0); i < nkv; i++ {
		k, err := r.str()
		if err != nil {
			return nil, fmt.Errorf("metadata %d: %w", i, err)
		}
		t, err := r.u32()
		if err != nil {
			return nil, fmt.Errorf("metadata %q: %w", k, err)
		}
		v, err := r.value(t)
		if err != nil {
			return nil, fmt.Errorf("metadata %q: %w", k, err)
		}
		if k == "general.alignment" {
			if a, ok := v.(uint32); ok && a > 0 && a&(a-1) == 0 {
				align = uint64(a)
			}
		}
		f.KV = append(f.KV, KV{k, v})
	}
	type info struct {
		t   Tensor
		off uint64
	}
	infos := make([]info, 0, nt)
	for i := uint64(0); i < nt; i++ {
		name, err := r.str()
		if err != nil {
			return nil, fmt.Errorf("tensor %d: %w", i, err)
		}
		nd, err := r.u32()
		if err != nil || nd > maxDims {
			return nil, fmt.Errorf("tensor %q: bad dimension count", name)
		}
		shape := make([]int64, nd)
		for d := int(nd) - 1; d >= 0; d-- {
			v, err := r.u64()
			if err != nil {
				return nil, fmt.Errorf("tensor %q: %w", name, err)
			}
			if v > 1<<40 {
				return nil, fmt.Errorf("tensor %q: dimension %d is implausible", name, v)
			}
			shape[d] = int64(v)
		}
		typ, err := r.u32()
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		off, err := r.u64()
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		infos = append(infos, info{Tensor{Name: name, Shape: shape, Type: typ}, off})
	}
	data := (uint64(r.pos) + align - 1) / align * align
	for _, in := range infos {
		size := uint64(4)
		switch in.t.Type {
		case GGMLF32:
		case GGMLF16:
			size = 2
		default:
			return nil, fmt.Errorf("tensor %q: type %d is not F32 or F16 (quantized tensors are not read)", in.t.Name, in.t.Type)
		}
		for _, d := range in.t.Shape {
			if d != 0 && size > (1<<62)/uint64(d) {
				return nil, fmt.Errorf("tensor %q: shape %v overflows", in.t.Name, in.t.Shape)
			}
			size *= uint64(d)
		}
		start := data + in.off
		if start < data || start+size < start || start+size > uint64(len(b)) {
			return nil, fmt.Errorf("tensor %q: data [%d, %d) beyond the %d-byte file (truncated?)", in.t.Name, start, start+size, len(b))
		}
		in.t.Data = b[start : start+size]
		f.Tensors = append(f.Tensors, in.t)
	}
	return f, nil
}

// Read parses a GGUF file from disk.
func Read(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}
