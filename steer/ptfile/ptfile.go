// Package ptfile reads the files torch.save writes (a zip holding a pickle and raw storages), so the Assistant
// Axis artifacts released as .pt files load without Python. Only data comes out: tensors, dicts, lists, tuples,
// strings, numbers, booleans and None. The pickle machine knows a short list of globals (tensor rebuilding,
// storages, OrderedDict) and refuses everything else, so a hostile file cannot make it do anything but fail.
package ptfile

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Tensor is a tensor read from a .pt file, converted to float32 (integer and bool tensors too).
type Tensor struct {
	DType string // torch's storage name: Float, Half, BFloat16, Double, Long, Int, Short, Char, Byte, Bool
	Shape []int64
	Data  []float32 // row-major
}

// Dict is a pickled dict (or OrderedDict) with its keys in insertion order.
type Dict struct {
	Keys   []any
	Values []any
}

// Get returns the value under a string key.
func (d *Dict) Get(key string) (any, bool) {
	for i, k := range d.Keys {
		if s, ok := k.(string); ok && s == key {
			return d.Values[i], true
		}
	}
	return nil, false
}

// Limits bound what a file may ask of the reader.
const (
	maxStack    = 1 << 16
	maxMemo     = 1 << 20
	maxElements = 1 << 28 // elements of one tensor (1 GiB as float32)
	maxPickle   = 16 << 20
	// maxFileBytes bounds what one file may make the reader hold: inflated storages plus the float32 tensors read
	// out of them. The largest vector files (a 70B model's [80, 8192] axis, a capping config) need a few MiB.
	maxFileBytes = 96 << 20
)

// Read parses a torch.save file from memory; name labels errors.
func Read(raw []byte, name string) (any, error) {
	zr, err := zip.NewReader(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		if len(raw) >= 2 && raw[0] == 0x80 {
			return nil, fmt.Errorf("%s: a legacy (pre-1.6, non-zip) torch file: re-save it with a current torch.save", name)
		}
		return nil, fmt.Errorf("%s: not a torch.save zip archive (%v)", name, err)
	}
	files := map[string]*zip.File{}
	prefix := ""
	for _, f := range zr.File {
		files[f.Name] = f
		if strings.HasSuffix(f.Name, "/data.pkl") || f.Name == "data.pkl" {
			prefix = strings.TrimSuffix(f.Name, "data.pkl")
		}
	}
	pkl, ok := files[prefix+"data.pkl"]
	if !ok {
		return nil, fmt.Errorf("%s: no data.pkl in the archive: not a torch.save file", name)
	}
	code, err := readEntry(pkl, maxPickle)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %v", name, pkl.Name, err)
	}
	m := &machine{name: name, code: code, storages: map[string][]byte{}, budget: maxFileBytes}
	m.loadStorage = func(key string, limit int64) ([]byte, error) {
		if b, ok := m.storages[key]; ok {
			return b, nil
		}
		f, ok := files[prefix+"data/"+key]
		if !ok {
			return nil, fmt.Errorf("storage %q missing from the archive", key)
		}
		if err := m.spend(limit); err != nil {
			return nil, err
		}
		b, err := readEntry(f, limit)
		if err != nil {
			return nil, fmt.Errorf("storage %q: %v", key, err)
		}
		m.storages[key] = b
		return b, nil
	}
	v, err := m.run()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return v, nil
}

func readEntry(f *zip.File, limit int64) ([]byte, error) {
	if int64(f.UncompressedSize64) > limit || f.UncompressedSize64 > math.MaxInt32*4 {
		return nil, fmt.Errorf("entry of %d bytes is larger than expected (%d)", f.UncompressedSize64, limit)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("entry is larger than expected (%d bytes)", limit)
	}
	return b, nil
}

// global is a class or function the machine knows by name.
type global struct{ module, name string }

// storageRef is a persistent id: ('storage', dtype global, key, location, numel).
type storageRef struct {
	dtype string
	key   string
	numel int64
}

type machine struct {
	name        string
	code        []byte
	pos         int
	stack       []any
	marks       []int
	memo        map[uint64]any
	storages    map[string][]byte
	loadStorage func(key string, limit int64) ([]byte, error)
	budget      int64 // bytes the file may still make the reader hold
}

// spend takes n bytes from the file's budget, or says the file asks for more than a vector file holds.
func (m *machine) spend(n int64) error {
	if n > m.budget {
		return fmt.Errorf("the file's tensors need more than %d MiB: more than any vector file holds (a crafted or wrong file?)", maxFileBytes>>20)
	}
	m.budget -= n
	return nil
}

var errTruncated = errors.New("pickle ends early (truncated file)")

func (m *machine) read(n int) ([]byte, error) {
	if n < 0 || m.pos+n > len(m.code) {
		return nil, errTruncated
	}
	b := m.code[m.pos : m.pos+n]
	m.pos += n
	return b, nil
}

func (m *machine) line() (string, error) {
	i := bytes.IndexByte(m.code[m.pos:], '\n')
	if i < 0 {
		return "", errTruncated
	}
	s := string(m.code[m.pos : m.pos+i])
	m.pos += i + 1
	return s, nil
}

func (m *machine) push(v any) error {
	if len(m.stack) >= maxStack {
		return fmt.Errorf("pickle stack deeper than %d", maxStack)
	}
	m.stack = append(m.stack, v)
	return nil
}

func (m *machine) pop() (any, error) {
	if len(m.stack) == 0 || len(m.marks) > 0 && len(m.stack) <= m.marks[len(m.marks)-1] {
		return nil, errors.New("pickle pops an empty stack (corrupt file)")
	}
	v := m.stack[len(m.stack)-1]
	m.stack = m.stack[:len(m.stack)-1]
	return v, nil
}

func (m *machine) top() any {
	if len(m.stack) == 0 {
		return nil
	}
	return m.stack[len(m.stack)-1]
}

// popMark returns the items above the most recent MARK.
func (m *machine) popMark() ([]any, error) {
	if len(m.marks) == 0 {
		return nil, errors.New("pickle has no MARK to pop to (corrupt file)")
	}
	k := m.marks[len(m.marks)-1]
	m.marks = m.marks[:len(m.marks)-1]
	if k > len(m.stack) {
		return nil, errors.New("pickle MARK beyond the stack (corrupt file)")
	}
	items := append([]any(nil), m.stack[k:]...)
	m.stack = m.stack[:k]
	return items, nil
}

func (m *machine) memoize(idx uint64) error {
	if len(m.stack) == 0 {
		return errors.New("pickle memoizes an empty stack (corrupt file)")
	}
	if len(m.memo) >= maxMemo {
		return fmt.Errorf("pickle memo larger than %d entries", maxMemo)
	}
	m.memo[idx] = m.top()
	return nil
}

func (m *machine) run() (any, error) {
	m.memo = map[uint64]any{}
	for {
		op, err := m.read(1)
		if err != nil {
			return nil, err
		}
		if err := m.step(op[0]); err != nil {
			if err == io.EOF {
				if len(m.stack) != 1 {
					return nil, fmt.Errorf("pickle stops with %d values on the stack (corrupt file)", len(m.stack))
				}
				return m.stack[0], nil
			}
			return nil, fmt.Errorf("pickle byte %d (opcode 0x%02x): %w", m.pos-1, op[0], err)
		}
	}
}

func (m *machine) step(op byte) error {
	switch op {
	case 0x80: // PROTO
		_, err := m.read(1)
		return err
	case 0x95: // FRAME
		_, err := m.read(8)
		return err
	case '.': // STOP
		return io.EOF
	case '(': // MARK
		if len(m.marks) >= maxStack {
			return fmt.Errorf("more than %d nested MARKs", maxStack)
		}
		m.marks = append(m.marks, len(m.stack))
		return nil
	case '}':
		return m.push(&Dict{})
	case ']':
		return m.push(&[]any{})
	case ')':
		return m.push([]any{})
	case 'N':
		return m.push(nil)
	case 0x88:
		return m.push(true)
	case 0x89:
		return m.push(false)
	case 'K':
		b, err := m.read(1)
		if err != nil {
			return err
		}
		return m.push(int64(b[0]))
	case 'M':
		b, err := m.read(2)
		if err != nil {
			return err
		}
		return m.push(int64(binary.LittleEndian.Uint16(b)))
	case 'J':
		b, err := m.read(4)
		if err != nil {
			return err
		}
		return m.push(int64(int32(binary.LittleEndian.Uint32(b))))
	case 0x8a, 0x8b: // LONG1, LONG4
		var n int
		if op == 0x8a {
			b, err := m.read(1)
			if err != nil {
				return err
			}
			n = int(b[0])
		} else {
			b, err := m.read(4)
			if err != nil {
				return err
			}
			n = int(int32(binary.LittleEndian.Uint32(b)))
		}
		if n > 8 || n < 0 {
			return fmt.Errorf("integer of %d bytes is too large", n)
		}
		b, err := m.read(n)
		if err != nil {
			return err
		}
		var v int64
		for i := n - 1; i >= 0; i-- {
			v = v<<8 | int64(b[i])
		}
		if n > 0 && n < 8 && b[n-1]&0x80 != 0 {
			v -= 1 << (8 * n)
		}
		return m.push(v)
	case 'G':
		b, err := m.read(8)
		if err != nil {
			return err
		}
		return m.push(math.Float64frombits(binary.BigEndian.Uint64(b)))
	case 'X', 0x8c, 0x8d, 'T', 'U', 'B', 'C', 0x8e: // strings and bytes
		var n int
		switch op {
		case 0x8c, 'U', 'C':
			b, err := m.read(1)
			if err != nil {
				return err
			}
			n = int(b[0])
		case 0x8d, 0x8e:
			b, err := m.read(8)
			if err != nil {
				return err
			}
			u := binary.LittleEndian.Uint64(b)
			if u > uint64(len(m.code)) {
				return errTruncated
			}
			n = int(u)
		default:
			b, err := m.read(4)
			if err != nil {
				return err
			}
			n = int(binary.LittleEndian.Uint32(b))
		}
		b, err := m.read(n)
		if err != nil {
			return err
		}
		if op == 'B' || op == 'C' || op == 0x8e {
			return m.push(append([]byte(nil), b...))
		}
		return m.push(string(b))
	case 't':
		items, err := m.popMark()
		if err != nil {
			return err
		}
		return m.push(items)
	case 0x85, 0x86, 0x87:
		n := int(op - 0x84)
		if len(m.stack) < n {
			return errors.New("tuple of more items than the stack holds (corrupt file)")
		}
		items := make([]any, n)
		for i := n - 1; i >= 0; i-- {
			v, err := m.pop()
			if err != nil {
				return err
			}
			items[i] = v
		}
		return m.push(items)
	case 'q', 'r', 0x94: // BINPUT, LONG_BINPUT, MEMOIZE
		var idx uint64
		switch op {
		case 'q':
			b, err := m.read(1)
			if err != nil {
				return err
			}
			idx = uint64(b[0])
		case 'r':
			b, err := m.read(4)
			if err != nil {
				return err
			}
			idx = uint64(binary.LittleEndian.Uint32(b))
		default:
			idx = uint64(len(m.memo))
		}
		return m.memoize(idx)
	case 'h', 'j': // BINGET, LONG_BINGET
		var idx uint64
		if op == 'h' {
			b, err := m.read(1)
			if err != nil {
				return err
			}
			idx = uint64(b[0])
		} else {
			b, err := m.read(4)
			if err != nil {
				return err
			}
			idx = uint64(binary.LittleEndian.Uint32(b))
		}
		v, ok := m.memo[idx]
		if !ok {
			return fmt.Errorf("memo entry %d was never stored (corrupt file)", idx)
		}
		return m.push(v)
	case 'c': // GLOBAL
		mod, err := m.line()
		if err != nil {
			return err
		}
		name, err := m.line()
		if err != nil {
			return err
		}
		return m.pushGlobal(mod, name)
	case 0x93: // STACK_GLOBAL
		name, err := m.pop()
		if err != nil {
			return err
		}
		mod, err := m.pop()
		if err != nil {
			return err
		}
		ms, ok1 := mod.(string)
		ns, ok2 := name.(string)
		if !ok1 || !ok2 {
			return errors.New("STACK_GLOBAL of non-strings (corrupt file)")
		}
		return m.pushGlobal(ms, ns)
	case 'Q': // BINPERSID
		pid, err := m.pop()
		if err != nil {
			return err
		}
		ref, err := storageFromPID(pid)
		if err != nil {
			return err
		}
		return m.push(ref)
	case 'R', 0x81: // REDUCE, NEWOBJ
		args, err := m.pop()
		if err != nil {
			return err
		}
		fn, err := m.pop()
		if err != nil {
			return err
		}
		argv, ok := args.([]any)
		if !ok {
			return errors.New("call with non-tuple arguments (corrupt file)")
		}
		g, ok := fn.(global)
		if !ok {
			return fmt.Errorf("call of a %T, not a known function", fn)
		}
		v, err := m.call(g, argv)
		if err != nil {
			return err
		}
		return m.push(v)
	case 'b': // BUILD: state for an object; keel's objects need none (tensor hooks state is ignored)
		_, err := m.pop()
		return err
	case 's', 'u': // SETITEM, SETITEMS
		var items []any
		if op == 's' {
			v, err := m.pop()
			if err != nil {
				return err
			}
			k, err := m.pop()
			if err != nil {
				return err
			}
			items = []any{k, v}
		} else {
			var err error
			if items, err = m.popMark(); err != nil {
				return err
			}
		}
		d, ok := m.top().(*Dict)
		if !ok || len(items)%2 != 0 {
			return errors.New("SETITEMS on something that is not a dict (corrupt file)")
		}
		for i := 0; i < len(items); i += 2 {
			d.Keys = append(d.Keys, items[i])
			d.Values = append(d.Values, items[i+1])
		}
		return nil
	case 'a', 'e': // APPEND, APPENDS
		var items []any
		if op == 'a' {
			v, err := m.pop()
			if err != nil {
				return err
			}
			items = []any{v}
		} else {
			var err error
			if items, err = m.popMark(); err != nil {
				return err
			}
		}
		l, ok := m.top().(*[]any)
		if !ok {
			return errors.New("APPENDS on something that is not a list (corrupt file)")
		}
		*l = append(*l, items...)
		return nil
	}
	return fmt.Errorf("unsupported pickle opcode 0x%02x: keel reads only the data torch.save writes", op)
}

// storageTypes maps torch's legacy storage classes to their element types.
var storageTypes = map[string]bool{"FloatStorage": true, "HalfStorage": true, "BFloat16Storage": true, "DoubleStorage": true,
	"LongStorage": true, "IntStorage": true, "ShortStorage": true, "CharStorage": true, "ByteStorage": true, "BoolStorage": true}

func (m *machine) pushGlobal(mod, name string) error {
	switch {
	case mod == "torch._utils" && (name == "_rebuild_tensor_v2" || name == "_rebuild_parameter" || name == "_rebuild_tensor_v3"),
		mod == "collections" && name == "OrderedDict",
		mod == "torch" && storageTypes[name],
		mod == "torch" && name == "device":
		return m.push(global{mod, name})
	}
	return fmt.Errorf("refusing global %s.%s: keel reads tensors, dicts, lists, numbers and strings only", mod, name)
}

func storageFromPID(pid any) (storageRef, error) {
	t, ok := pid.([]any)
	if !ok || len(t) != 5 {
		return storageRef{}, errors.New("persistent id is not a storage tuple")
	}
	if s, _ := t[0].(string); s != "storage" {
		return storageRef{}, fmt.Errorf("persistent id of kind %v, want storage", t[0])
	}
	g, ok := t[1].(global)
	if !ok || g.module != "torch" || !storageTypes[g.name] {
		return storageRef{}, fmt.Errorf("storage of unknown type %v", t[1])
	}
	key, ok := t[2].(string)
	numel, ok2 := t[4].(int64)
	if !ok || !ok2 || numel < 0 || numel > maxElements {
		return storageRef{}, errors.New("storage key or size malformed")
	}
	return storageRef{dtype: strings.TrimSuffix(g.name, "Storage"), key: key, numel: numel}, nil
}

func (m *machine) call(g global, args []any) (any, error) {
	switch g.name {
	case "OrderedDict":
		return &Dict{}, nil
	case "device":
		if len(args) > 0 {
			return args[0], nil
		}
		return nil, nil
	case "_rebuild_parameter":
		if len(args) < 1 {
			return nil, errors.New("_rebuild_parameter without a tensor")
		}
		if _, ok := args[0].(*Tensor); !ok {
			return nil, errors.New("_rebuild_parameter of a non-tensor")
		}
		return args[0], nil
	case "_rebuild_tensor_v2", "_rebuild_tensor_v3":
		return m.rebuild(args)
	}
	return nil, fmt.Errorf("calling %s.%s is not supported", g.module, g.name)
}

var elemSize = map[string]int{"Float": 4, "Half": 2, "BFloat16": 2, "Double": 8, "Long": 8, "Int": 4, "Short": 2, "Char": 1, "Byte": 1, "Bool": 1}

func ints(v any, what string) ([]int64, error) {
	t, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("tensor %s is not a tuple", what)
	}
	out := make([]int64, len(t))
	for i, x := range t {
		n, ok := x.(int64)
		if !ok || n < 0 {
			return nil, fmt.Errorf("tensor %s has a bad entry %v", what, x)
		}
		out[i] = n
	}
	return out, nil
}

// rebuild is torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...): it gathers the tensor's
// elements from its storage through the strides and converts them to float32.
func (m *machine) rebuild(args []any) (any, error) {
	if len(args) < 4 {
		return nil, errors.New("_rebuild_tensor with too few arguments")
	}
	ref, ok := args[0].(storageRef)
	if !ok {
		return nil, errors.New("_rebuild_tensor without a storage")
	}
	offset, ok := args[1].(int64)
	if !ok || offset < 0 {
		return nil, errors.New("tensor storage offset malformed")
	}
	shape, err := ints(args[2], "size")
	if err != nil {
		return nil, err
	}
	stride, err := ints(args[3], "stride")
	if err != nil {
		return nil, err
	}
	if len(stride) != len(shape) {
		return nil, fmt.Errorf("tensor size %v and stride %v differ in rank", shape, stride)
	}
	n := int64(1)
	last := offset // highest storage index touched
	for i, d := range shape {
		if d != 0 && n > maxElements/d {
			return nil, fmt.Errorf("tensor of shape %v is too large", shape)
		}
		n *= d
		if d > 0 {
			if stride[i] != 0 && d-1 > (maxElements-last)/stride[i] {
				return nil, fmt.Errorf("tensor strides %v overflow", stride)
			}
			last += (d - 1) * stride[i]
		}
	}
	size := elemSize[ref.dtype]
	if n > 0 && last >= ref.numel {
		return nil, fmt.Errorf("tensor %v (stride %v, offset %d) reaches past its storage of %d elements", shape, stride, offset, ref.numel)
	}
	// A view with more elements than its storage repeats elements (stride 0, overlapping strides): a way to make
	// a few bytes ask for gigabytes, never how a vector is saved.
	if n > ref.numel {
		return nil, fmt.Errorf("tensor %v (stride %v) has more elements than its storage of %d: keel reads tensors saved from their own data, not expanded views", shape, stride, ref.numel)
	}
	data, err := m.loadStorage(ref.key, ref.numel*int64(size))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) < ref.numel*int64(size) {
		return nil, fmt.Errorf("storage %q holds %d bytes, %d %s elements need %d (truncated archive?)", ref.key, len(data), ref.numel, ref.dtype, ref.numel*int64(size))
	}
	if err := m.spend(4 * n); err != nil {
		return nil, err
	}
	out := make([]float32, n)
	idx := make([]int64, len(shape))
	for k := int64(0); k < n; k++ {
		pos := offset
		for i := range idx {
			pos += idx[i] * stride[i]
		}
		out[k] = element(data[pos*int64(size):], ref.dtype)
		for i := len(idx) - 1; i >= 0; i-- {
			idx[i]++
			if idx[i] < shape[i] {
				break
			}
			idx[i] = 0
		}
	}
	return &Tensor{DType: ref.dtype, Shape: shape, Data: out}, nil
}

func element(b []byte, dtype string) float32 {
	switch dtype {
	case "Float":
		return math.Float32frombits(binary.LittleEndian.Uint32(b))
	case "Double":
		return float32(math.Float64frombits(binary.LittleEndian.Uint64(b)))
	case "BFloat16":
		return math.Float32frombits(uint32(binary.LittleEndian.Uint16(b)) << 16)
	case "Half":
		return halfToFloat(binary.LittleEndian.Uint16(b))
	case "Long":
		return float32(int64(binary.LittleEndian.Uint64(b)))
	case "Int":
		return float32(int32(binary.LittleEndian.Uint32(b)))
	case "Short":
		return float32(int16(binary.LittleEndian.Uint16(b)))
	case "Char":
		return float32(int8(b[0]))
	default: // Byte, Bool
		return float32(b[0])
	}
}

func halfToFloat(h uint16) float32 {
	sign := float32(1)
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * float32(math.Ldexp(frac, -24))
	case 0x1f:
		if frac == 0 {
			return sign * float32(math.Inf(1))
		}
		return float32(math.NaN())
	}
	return sign * float32(math.Ldexp(1+frac/1024, exp-15))
}

// Tensors flattens a value into its tensors by path: dict keys and list indices joined with ".", "" for a
// tensor at the root.
func Tensors(v any) map[string]*Tensor {
	out := map[string]*Tensor{}
	var walk func(path string, v any)
	join := func(path, k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	walk = func(path string, v any) {
		switch x := v.(type) {
		case *Tensor:
			out[path] = x
		case *Dict:
			for i, k := range x.Keys {
				walk(join(path, fmt.Sprint(k)), x.Values[i])
			}
		case *[]any:
			for i, e := range *x {
				walk(join(path, strconv.Itoa(i)), e)
			}
		case []any:
			for i, e := range x {
				walk(join(path, strconv.Itoa(i)), e)
			}
		}
	}
	walk("", v)
	return out
}

// Paths lists the tensor paths of a value, sorted.
func Paths(v any) []string {
	ts := Tensors(v)
	paths := make([]string, 0, len(ts))
	for p := range ts {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return paths
}
