// Package safetensors reads (by mmap, so weights cost ~1x their size in host memory) and writes the safetensors
// format: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte range,
// then the raw data.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/keel-lab/keel/internal/atomicfile"
)

// maxHeader bounds the JSON header (the reference implementation uses 100 MB).
const maxHeader = 100 << 20

// DTypeSize gives the element size of each safetensors dtype keel reads.
var dtypeSize = map[string]int{"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

// DTypeSize is the element size of a safetensors dtype name, or 0 when keel does not know it.
func DTypeSize(dtype string) int { return dtypeSize[dtype] }

// Info describes one tensor in a file.
type Info struct {
	Name   string
	DType  string
	Shape  []int64
	Offset [2]int64 // byte range within the data section
}

// Header is the parsed JSON header.
type Header struct {
	Tensors  map[string]Info
	Metadata map[string]string
	DataLen  int64
}

// ParseHeader validates a header against the data section's length. It never panics on hostile input.
func ParseHeader(raw []byte, dataLen int64) (*Header, error) {
	var entries map[string]json.RawMessage
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("header is not a JSON object: %v", err)
	}
	h := &Header{Tensors: make(map[string]Info, len(entries)), DataLen: dataLen}
	for name, msg := range entries {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &h.Metadata); err != nil {
				return nil, fmt.Errorf("__metadata__ is not a string map: %v", err)
			}
			continue
		}
		var e struct {
			DType       string  `json:"dtype"`
			Shape       []int64 `json:"shape"`
			DataOffsets []int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("tensor %q: %v", name, err)
		}
		size, ok := dtypeSize[e.DType]
		if !ok {
			return nil, fmt.Errorf("tensor %q: unsupported dtype %q (keel reads F32, F16, BF16, F64 and integer types)", name, e.DType)
		}
		if len(e.DataOffsets) != 2 {
			return nil, fmt.Errorf("tensor %q: data_offsets must be [begin, end]", name)
		}
		n := int64(size)
		for _, d := range e.Shape {
			if d < 0 {
				return nil, fmt.Errorf("tensor %q: negative dimension in shape %v", name, e.Shape)
			}
			if d != 0 && n > math.MaxInt64/d {
				return nil, fmt.Errorf("tensor %q: shape %v overflows", name, e.Shape)
			}
			n *= d
		}
		b, end := e.DataOffsets[0], e.DataOffsets[1]
		if b < 0 || end < b || end > dataLen {
			return nil, fmt.Errorf("tensor %q: byte range [%d, %d) lies outside the %d-byte data section (file truncated?)", name, b, end, dataLen)
		}
		if end-b != n {
			return nil, fmt.Errorf("tensor %q: byte range holds %d bytes but %s %v needs %d", name, end-b, e.DType, e.Shape, n)
		}
		h.Tensors[name] = Info{Name: name, DType: e.DType, Shape: e.Shape, Offset: [2]int64{b, end}}
	}
	// Each byte belongs to one tensor: overlapping ranges (every tensor at offset 0, say) are a corrupt or crafted
	// file, never weights.
	ranges := make([]Info, 0, len(h.Tensors))
	for _, t := range h.Tensors {
		if t.Offset[1] > t.Offset[0] {
			ranges = append(ranges, t)
		}
	}
	sort.Slice(ranges, func(i, j int) bool {
		if ranges[i].Offset[0] != ranges[j].Offset[0] {
			return ranges[i].Offset[0] < ranges[j].Offset[0]
		}
		return ranges[i].Name < ranges[j].Name
	})
	for i := 1; i < len(ranges); i++ {
		if a, b := ranges[i-1], ranges[i]; b.Offset[0] < a.Offset[1] {
			return nil, fmt.Errorf("tensors %q and %q overlap at bytes [%d, %d): a corrupt file, not weights", a.Name, b.Name, b.Offset[0], min(a.Offset[1], b.Offset[1]))
		}
	}
	return h, nil
}

// RegularFile refuses what only looks like a file: opening a FIFO blocks until someone writes to it, and a
// device never ends.
func RegularFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s): give the file itself", path, st.Mode().Type())
	}
	return nil
}

// File is an mmap'ed safetensors file.
type File struct {
	Path   string
	Header *Header
	mapped []byte
	data   []byte
}

// Open maps path and parses its header.
func Open(path string) (*File, error) {
	if err := RegularFile(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("%s: %d bytes is too short for a safetensors file (truncated or not safetensors)", path, size)
	}
	mapped, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE) // copy-on-write: tensors aliasing the file may be trained in place
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	hlen := binary.LittleEndian.Uint64(mapped[:8])
	if mapped[0] == '{' || mapped[0] == '[' { // a JSON file (capping.json, config.json) given where tensors go
		syscall.Munmap(mapped)
		return nil, fmt.Errorf("%s is a JSON file, not safetensors (which begins with its header's 8-byte length): give a .safetensors file", path)
	}
	if hlen > maxHeader || int64(hlen) > size-8 {
		syscall.Munmap(mapped)
		return nil, fmt.Errorf("%s: not a safetensors file, or a truncated one: its first 8 bytes do not give a header length that fits its %d bytes", path, size)
	}
	h, err := ParseHeader(mapped[8:8+hlen], size-8-int64(hlen))
	if err != nil {
		syscall.Munmap(mapped)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &File{Path: path, Header: h, mapped: mapped, data: mapped[8+hlen:]}, nil
}

// Data returns the bytes of one tensor (a slice of the mapping; valid until Close).
func (f *File) Data(name string) ([]byte, Info, error) {
	info, ok := f.Header.Tensors[name]
	if !ok {
		return nil, Info{}, fmt.Errorf("%s: no tensor %q", f.Path, name)
	}
	return f.data[info.Offset[0]:info.Offset[1]], info, nil
}

// Names lists the tensors, sorted.
func (f *File) Names() []string {
	names := make([]string, 0, len(f.Header.Tensors))
	for n := range f.Header.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Close unmaps the file.
func (f *File) Close() error {
	if f.mapped == nil {
		return nil
	}
	err := syscall.Munmap(f.mapped)
	f.mapped, f.data = nil, nil
	return err
}

// Set is the tensors of one checkpoint, possibly sharded over several files.
type Set struct {
	Files []*File
	where map[string]*File
}

// OpenDir opens model.safetensors, or the shards model.safetensors.index.json names, or every *.safetensors in dir.
func OpenDir(dir string) (*Set, error) {
	var paths []string
	index := filepath.Join(dir, "model.safetensors.index.json")
	if raw, err := os.ReadFile(index); err == nil {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, fmt.Errorf("%s: %v", index, err)
		}
		seen := map[string]bool{}
		for _, f := range idx.WeightMap {
			if !seen[f] {
				seen[f] = true
				paths = append(paths, filepath.Join(dir, filepath.Base(f)))
			}
		}
		sort.Strings(paths)
	} else {
		paths, _ = filepath.Glob(filepath.Join(dir, "*.safetensors"))
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no *.safetensors weights found: a Hugging Face model folder needs model.safetensors (or shards with model.safetensors.index.json)", dir)
	}
	s := &Set{where: map[string]*File{}}
	for _, p := range paths {
		f, err := Open(p)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.Files = append(s.Files, f)
		for name := range f.Header.Tensors {
			s.where[name] = f
		}
	}
	return s, nil
}

// Has reports whether the set holds a tensor.
func (s *Set) Has(name string) bool { _, ok := s.where[name]; return ok }

// Data finds a tensor in whichever shard holds it.
func (s *Set) Data(name string) ([]byte, Info, string, error) {
	f, ok := s.where[name]
	if !ok {
		return nil, Info{}, "", fmt.Errorf("tensor %q not found in the checkpoint's safetensors files", name)
	}
	b, info, err := f.Data(name)
	return b, info, f.Path, err
}

// Close unmaps every file.
func (s *Set) Close() {
	for _, f := range s.Files {
		f.Close()
	}
	s.Files = nil
}

// Tensor is one tensor to write.
type Tensor struct {
	Name  string
	DType string
	Shape []int64
	Data  []byte
}

// Write writes tensors to path atomically (temp file, fsync, rename), sorted by name with 8-byte aligned data.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	sorted := append([]Tensor(nil), tensors...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off int64
	for _, t := range sorted {
		size, ok := dtypeSize[t.DType]
		if !ok {
			return fmt.Errorf("write %s: tensor %q: unknown dtype %q", path, t.Name, t.DType)
		}
		n := int64(size)
		for _, d := range t.Shape {
			n *= d
		}
		if n != int64(len(t.Data)) {
			return fmt.Errorf("write %s: tensor %q: %d bytes for %s %v (want %d)", path, t.Name, len(t.Data), t.DType, t.Shape, n)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		header[t.Name] = map[string]any{"dtype": t.DType, "shape": shape, "data_offsets": []int64{off, off + n}}
		off += n
	}
	raw, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(raw)%8 != 0 {
		raw = append(raw, ' ')
	}
	return atomicfile.Write(path, func(w *os.File) error {
		var lenBuf [8]byte
		binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(raw)))
		if _, err := w.Write(lenBuf[:]); err != nil {
			return err
		}
		if _, err := w.Write(raw); err != nil {
			return err
		}
		for _, t := range sorted {
			if _, err := w.Write(t.Data); err != nil {
				return err
			}
		}
		return nil
	})
}
