// Package gguf writes and reads GGUF v3 files (llama.cpp's model format): metadata key-values, tensor infos,
// and tensor data aligned to 32 bytes.
package gguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"

	"github.com/keel-lab/keel/internal/atomicfile"
)

// Metadata value types.
const (
	TypeUint8   uint32 = 0
	TypeInt8    uint32 = 1
	TypeUint16  uint32 = 2
	TypeInt16   uint32 = 3
	TypeUint32  uint32 = 4
	TypeInt32   uint32 = 5
	TypeFloat32 uint32 = 6
	TypeBool    uint32 = 7
	TypeString  uint32 = 8
	TypeArray   uint32 = 9
	TypeUint64  uint32 = 10
	TypeInt64   uint32 = 11
	TypeFloat64 uint32 = 12
)

// Tensor types keel writes and reads.
const (
	GGMLF32 uint32 = 0
	GGMLF16 uint32 = 1
)

const (
	magic     = 0x46554747 // "GGUF" little-endian
	version   = 3
	alignment = 32
)

// KV is one metadata entry. Value is uint8..uint64, int8..int64, float32, float64, bool, string, or a []string,
// []float32, []int32 or []uint32 array.
type KV struct {
	Key   string
	Value any
}

// Tensor is one tensor: Shape in PyTorch order (outermost first; GGUF stores it reversed), data in Type.
type Tensor struct {
	Name  string
	Shape []int64
	Type  uint32
	Data  []byte
}

// File is a GGUF file's contents.
type File struct {
	Version uint32
	KV      []KV
	Tensors []Tensor
}

// Get returns a metadata value.
func (f *File) Get(key string) (any, bool) {
	for _, kv := range f.KV {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}

// Tensor finds a tensor by name.
func (f *File) Tensor(name string) (Tensor, bool) {
	for _, t := range f.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

type writer struct {
	w   *bufio.Writer
	n   int64
	err error
}

func (w *writer) bytes(b []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	w.err = err
}

func (w *writer) u32(v uint32) { w.bytes(binary.LittleEndian.AppendUint32(nil, v)) }
func (w *writer) u64(v uint64) { w.bytes(binary.LittleEndian.AppendUint64(nil, v)) }
func (w *writer) str(s string) { w.u64(uint64(len(s))); w.bytes([]byte(s)) }
func (w *writer) pad() {
	if r := w.n % alignment; r != 0 {
		w.bytes(make([]byte, alignment-r))
	}
}

// value writes v, with its type tag when typed (array elements are untagged).
func (w *writer) value(v any, typed bool) error {
	tag := func(t uint32) {
		if typed {
			w.u32(t)
		}
	}
	le := binary.LittleEndian
	switch x := v.(type) {
	case uint8:
		tag(TypeUint8)
		w.bytes([]byte{x})
	case int8:
		tag(TypeInt8)
		w.bytes([]byte{byte(x)})
	case uint16:
		tag(TypeUint16)
		w.bytes(le.AppendUint16(nil, x))
	case int16:
		tag(TypeInt16)
		w.bytes(le.AppendUint16(nil, uint16(x)))
	case uint32:
		tag(TypeUint32)
		w.u32(x)
	case int32:
		tag(TypeInt32)
		w.u32(uint32(x))
	case float32:
		tag(TypeFloat32)
		w.bytes(le.AppendUint32(nil, f32bits(x)))
	case bool:
		tag(TypeBool)
		b := byte(0)
		if x {
			b = 1
		}
		w.bytes([]byte{b})
	case string:
		tag(TypeString)
		w.str(x)
	case uint64:
		tag(TypeUint64)
		w.u64(x)
	case int64:
		tag(TypeInt64)
		w.u64(uint64(x))
	case float64:
		tag(TypeFloat64)
		w.u64(f64bits(x))
	case []string:
		tag(TypeArray)
		w.u32(TypeString)
		w.u64(uint64(len(x)))
		for _, s := range x {
			w.str(s)
		}
	case []float32:
		tag(TypeArray)
		w.u32(TypeFloat32)
		w.u64(uint64(len(x)))
		for _, f := range x {
			w.u32(f32bits(f))
		}
	case []int32:
		tag(TypeArray)
		w.u32(TypeInt32)
		w.u64(uint64(len(x)))
		for _, i := range x {
			w.u32(uint32(i))
		}
	case []uint32:
		tag(TypeArray)
		w.u32(TypeUint32)
		w.u64(uint64(len(x)))
		for _, i := range x {
			w.u32(i)
		}
	default:
		return fmt.Errorf("unsupported metadata value %T", v)
	}
	return w.err
}

// Write writes a GGUF v3 file atomically (temp file, fsync, rename).
func Write(path string, kvs []KV, tensors []Tensor) error {
	for _, t := range tensors {
		want := int64(4)
		if t.Type == GGMLF16 {
			want = 2
		} else if t.Type != GGMLF32 {
			return fmt.Errorf("write %s: tensor %s: type %d is not F32 or F16", path, t.Name, t.Type)
		}
		for _, d := range t.Shape {
			want *= d
		}
		if want != int64(len(t.Data)) {
			return fmt.Errorf("write %s: tensor %s: %d bytes for shape %v", path, t.Name, len(t.Data), t.Shape)
		}
	}
	return atomicfile.Write(path, func(f *os.File) error {
		w := &writer{w: bufio.NewWriterSize(f, 1<<20)}
		w.u32(magic)
		w.u32(version)
		w.u64(uint64(len(tensors)))
		w.u64(uint64(len(kvs)))
		for _, kv := range kvs {
			w.str(kv.Key)
			if err := w.value(kv.Value, true); err != nil {
				return fmt.Errorf("metadata %q: %w", kv.Key, err)
			}
		}
		var off uint64
		for _, t := range tensors {
			w.str(t.Name)
			w.u32(uint32(len(t.Shape)))
			for d := len(t.Shape) - 1; d >= 0; d-- {
				w.u64(uint64(t.Shape[d]))
			}
			w.u32(t.Type)
			w.u64(off)
			off += uint64(len(t.Data))
			off = (off + alignment - 1) / alignment * alignment
		}
		w.pad()
		for _, t := range tensors {
			w.bytes(t.Data)
			w.pad()
		}
		if w.err != nil {
			return w.err
		}
		return w.w.Flush()
	})
}
