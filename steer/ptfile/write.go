package ptfile

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"

	"github.com/keel-lab/keel/engine/safetensors"
)

// Write encodes a value the way torch.save does, so Python loads it with torch.load(path) (weights_only too):
//
//	<name>/data.pkl    a protocol-2 pickle of the value; each tensor is
//	                   torch._utils._rebuild_tensor_v2((storage id), offset, size, stride, False, OrderedDict())
//	                   with the persistent id ("storage", torch.FloatStorage, key, "cpu", numel)
//	<name>/data/<key>  each tensor's float32 storage, little-endian
//	<name>/byteorder   "little"
//	<name>/version     "3"
//
// Values: *Tensor (written as float32), map[string]any (keys sorted), *Dict (in order), []any (a list), string,
// int, int64, float64, bool and nil.
func Write(w io.Writer, name string, v any) error {
	e := &encoder{}
	e.op(0x80, 2)
	if err := e.value(v); err != nil {
		return err
	}
	e.op('.')
	zw := zip.NewWriter(w)
	// torch.load wants the records uncompressed (Store) and reads them by name.
	put := func(path string, data []byte) error {
		f, err := zw.CreateHeader(&zip.FileHeader{Name: name + "/" + path, Method: zip.Store})
		if err != nil {
			return err
		}
		_, err = f.Write(data)
		return err
	}
	if err := put("data.pkl", e.pkl.Bytes()); err != nil {
		return err
	}
	if err := put("byteorder", []byte("little")); err != nil {
		return err
	}
	for i, s := range e.storages {
		if err := put("data/"+strconv.Itoa(i), safetensors.F32Bytes(s)); err != nil {
			return err
		}
	}
	if err := put("version", []byte("3\n")); err != nil {
		return err
	}
	return zw.Close()
}

type encoder struct {
	pkl      bytes.Buffer
	storages [][]float32
}

func (e *encoder) op(b ...byte) { e.pkl.Write(b) }

func (e *encoder) str(s string) {
	e.op('X')
	binary.Write(&e.pkl, binary.LittleEndian, uint32(len(s)))
	e.pkl.WriteString(s)
}

func (e *encoder) int(n int64) {
	switch {
	case n >= 0 && n < 256:
		e.op('K', byte(n))
	case n >= math.MinInt32 && n <= math.MaxInt32:
		e.op('J')
		binary.Write(&e.pkl, binary.LittleEndian, int32(n))
	default:
		e.op(0x8a, 8)
		binary.Write(&e.pkl, binary.LittleEndian, n)
	}
}

func (e *encoder) value(v any) error {
	switch x := v.(type) {
	case nil:
		e.op('N')
	case bool:
		if x {
			e.op(0x88)
		} else {
			e.op(0x89)
		}
	case int:
		e.int(int64(x))
	case int64:
		e.int(x)
	case float64:
		e.op('G')
		binary.Write(&e.pkl, binary.BigEndian, math.Float64bits(x))
	case string:
		e.str(x)
	case []any:
		e.op(']', '(')
		for _, item := range x {
			if err := e.value(item); err != nil {
				return err
			}
		}
		e.op('e')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		e.op('}', '(')
		for _, k := range keys {
			e.str(k)
			if err := e.value(x[k]); err != nil {
				return err
			}
		}
		e.op('u')
	case *Dict:
		e.op('}', '(')
		for i, k := range x.Keys {
			if err := e.value(k); err != nil {
				return err
			}
			if err := e.value(x.Values[i]); err != nil {
				return err
			}
		}
		e.op('u')
	case *Tensor:
		return e.tensor(x)
	default:
		return fmt.Errorf("ptfile: cannot write a %T", v)
	}
	return nil
}

func (e *encoder) tensor(t *Tensor) error {
	numel := int64(1)
	for _, d := range t.Shape {
		numel *= d
	}
	if numel != int64(len(t.Data)) {
		return fmt.Errorf("ptfile: tensor of shape %v holds %d values", t.Shape, len(t.Data))
	}
	key := strconv.Itoa(len(e.storages))
	e.storages = append(e.storages, t.Data)
	e.pkl.WriteString("ctorch._utils\n_rebuild_tensor_v2\n")
	e.op('(', '(')
	e.str("storage")
	e.pkl.WriteString("ctorch\nFloatStorage\n")
	e.str(key)
	e.str("cpu")
	e.int(numel)
	e.op('t', 'Q') // the persistent id tuple, then BINPERSID
	e.int(0)
	e.op('(')
	for _, d := range t.Shape {
		e.int(d)
	}
	e.op('t', '(')
	stride := int64(1)
	strides := make([]int64, len(t.Shape))
	for i := len(t.Shape) - 1; i >= 0; i-- {
		strides[i] = stride
		stride *= t.Shape[i]
	}
	for _, s := range strides {
		e.int(s)
	}
	e.op('t', 0x89)
	e.pkl.WriteString("ccollections\nOrderedDict\n")
	e.op(')', 'R', 't', 'R')
	return nil
}
