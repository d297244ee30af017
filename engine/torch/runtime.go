// Package torch is keel's binding to libtorch: it loads the C shim (engine/torch/csrc) at run time with purego,
// so the keel binary itself builds without cgo, and wraps tensors with explicit ownership (see Scope).
package torch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/keel-lab/keel/internal/datadir"
)

// ShimName is the file name of the compiled shim.
const ShimName = "libkeeltorch.so"

// ErrNoShim is wrapped by Load when the shim cannot be found.
var ErrNoShim = errors.New("libtorch shim not found")

// Runtime is a loaded shim: the entry points of keel_torch.h as Go functions.
type Runtime struct {
	Path string
	Info string // "libtorch=X cuda=0|1 devices=N"

	info            func(buf unsafe.Pointer, n int64) uintptr
	abiVersion      func() int64
	freeString      func(s uintptr)
	setNumThreads   func(n int64) uintptr
	getNumThreads   func() int64
	trimHostMemory  func() int64
	manualSeed      func(seed uint64) uintptr
	cudaDeviceCount func() int64
	cudaMemory      func(dev int64, alloc, peak, reserved *int64) uintptr
	cudaMemInfo     func(dev int64, free, total *int64) uintptr
	cudaResetPeak   func(dev int64) uintptr
	synchronize     func(dev int64) uintptr

	sym symbols // hot entry points, called through purego.SyscallN (no reflection)

	setGradEnabled func(enabled int64) int64
	setAutocast    func(devType, enabled, dtype int64) int64
	clipGradNorm   func(ts *uintptr, n int64, maxNorm float64, total *float64) uintptr

	adamwNew      func(ts *uintptr, n int64, lr, b1, b2, eps, wd float64, out *uintptr) uintptr
	adamwStep     func(o uintptr) uintptr
	adamwZeroGrad func(o uintptr) uintptr
	adamwSetLR    func(o uintptr, lr float64) uintptr
	adamwFree     func(o uintptr)
}

// ShimSearchPath lists where Load looks for the shim, in order: $KEEL_SHIM, next to the executable,
// build/ in the current folder or any folder above it, and $XDG_DATA_HOME/keel (~/.local/share/keel).
func ShimSearchPath() []string {
	var paths []string
	if p := os.Getenv("KEEL_SHIM"); p != "" {
		return []string{p}
	}
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		paths = append(paths, filepath.Join(dir, ShimName), filepath.Join(dir, "..", "build", ShimName))
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			paths = append(paths, filepath.Join(dir, "build", ShimName))
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	if p := datadir.Path(ShimName); p != "" {
		paths = append(paths, p)
	}
	return paths
}

// Load finds the shim (see ShimSearchPath) and opens it.
func Load() (*Runtime, error) {
	paths := ShimSearchPath()
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return Open(p)
		}
	}
	if env := os.Getenv("KEEL_SHIM"); env != "" {
		return nil, fmt.Errorf("%w at KEEL_SHIM=%s: run `make setup` to build it, or unset KEEL_SHIM", ErrNoShim, env)
	}
	return nil, fmt.Errorf("%w (looked next to the binary, in build/ and in the XDG data dir): run `make setup` to compile it", ErrNoShim)
}

// Open loads the shim at path.
func Open(path string) (*Runtime, error) {
	lib, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "libtorch") || strings.Contains(msg, "libc10") {
			return nil, fmt.Errorf("load %s: %v: libtorch is missing or moved; run `make setup` again", path, err)
		}
		return nil, fmt.Errorf("load %s: %v: run `make setup` to rebuild the shim", path, err)
	}
	r := &Runtime{Path: path}
	fns := []struct {
		ptr  any
		name string
	}{
		{&r.abiVersion, "kt_abi_version"}, {&r.info, "kt_info"}, {&r.freeString, "kt_free_string"},
		{&r.setNumThreads, "kt_set_num_threads"}, {&r.getNumThreads, "kt_get_num_threads"}, {&r.trimHostMemory, "kt_trim_host_memory"},
		{&r.manualSeed, "kt_manual_seed"}, {&r.cudaDeviceCount, "kt_cuda_device_count"},
		{&r.cudaMemory, "kt_cuda_memory"}, {&r.cudaMemInfo, "kt_cuda_mem_info"}, {&r.cudaResetPeak, "kt_cuda_reset_peak"}, {&r.synchronize, "kt_synchronize"},
		{&r.setGradEnabled, "kt_set_grad_enabled"}, {&r.setAutocast, "kt_set_autocast"},
		{&r.clipGradNorm, "kt_clip_grad_norm"},
		{&r.adamwNew, "kt_adamw_new"}, {&r.adamwStep, "kt_adamw_step"}, {&r.adamwZeroGrad, "kt_adamw_zero_grad"},
		{&r.adamwSetLR, "kt_adamw_set_lr"}, {&r.adamwFree, "kt_adamw_free"},
	}
	for _, f := range r.sym.table() {
		p, err := purego.Dlsym(lib, f.name)
		if err != nil {
			return nil, fmt.Errorf("load %s: symbol %s missing: the shim is out of date; run `make setup`", path, f.name)
		}
		*f.addr = p
	}
	for _, f := range fns {
		sym, err := purego.Dlsym(lib, f.name)
		if err != nil {
			return nil, fmt.Errorf("load %s: symbol %s missing: the shim is out of date; run `make setup`", path, f.name)
		}
		purego.RegisterFunc(f.ptr, sym)
	}
	if err := checkABI(path, r.abiVersion()); err != nil {
		return nil, err
	}
	buf := make([]byte, 256)
	r.info(unsafe.Pointer(&buf[0]), int64(len(buf)))
	r.Info = cString(uintptr(unsafe.Pointer(&buf[0])))
	return r, nil
}

// cString copies a NUL-terminated C string (memory owned by C).
func cString(p uintptr) string {
	if p == 0 {
		return ""
	}
	base := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	n := 0
	for *(*byte)(unsafe.Add(base, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(base), n))
}

// check turns a shim error string into a Go error and releases it.
func (r *Runtime) check(op string, p uintptr) error {
	if p == 0 {
		return nil
	}
	msg := cString(p)
	r.freeString(p)
	return fmt.Errorf("torch %s: %s", op, msg)
}

// Version is the libtorch version the shim was built against.
func (r *Runtime) Version() string {
	for _, f := range strings.Fields(r.Info) {
		if v, ok := strings.CutPrefix(f, "libtorch="); ok {
			return v
		}
	}
	return "unknown"
}

// CUDAAvailable reports whether libtorch sees a CUDA device.
func (r *Runtime) CUDAAvailable() bool { return r.cudaDeviceCount() > 0 }

// CUDADeviceCount is the number of CUDA devices libtorch sees.
func (r *Runtime) CUDADeviceCount() int { return int(r.cudaDeviceCount()) }

// SetNumThreads sets libtorch's intra-op thread count.
func (r *Runtime) SetNumThreads(n int) error {
	return r.check("set_num_threads", r.setNumThreads(int64(n)))
}

// TrimHostMemory hands the C heap's free memory back to the system (glibc keeps it otherwise, so a process
// would hold its peak after one long prefill); it reports whether any was released.
func (r *Runtime) TrimHostMemory() bool { return r.trimHostMemory() != 0 }

// NumThreads is libtorch's intra-op thread count.
func (r *Runtime) NumThreads() int { return int(r.getNumThreads()) }

// ManualSeed seeds libtorch's generators (CPU and CUDA).
func (r *Runtime) ManualSeed(seed uint64) error { return r.check("manual_seed", r.manualSeed(seed)) }

// CUDAMemory returns the caching allocator's current and peak allocated bytes and reserved bytes.
func (r *Runtime) CUDAMemory(dev int) (allocated, peak, reserved int64, err error) {
	err = r.check("cuda_memory", r.cudaMemory(int64(dev), &allocated, &peak, &reserved))
	return
}

// CUDAFreeMemory is what the device has free now, other processes' use counted, and its total.
func (r *Runtime) CUDAFreeMemory(dev int) (free, total int64, err error) {
	err = r.check("cuda_mem_info", r.cudaMemInfo(int64(dev), &free, &total))
	return
}

// CUDAResetPeak resets the peak-memory statistic of a device.
func (r *Runtime) CUDAResetPeak(dev int) error {
	return r.check("cuda_reset_peak", r.cudaResetPeak(int64(dev)))
}

// Synchronize waits for the device's queued work (no-op without CUDA).
func (r *Runtime) Synchronize(dev int) error {
	return r.check("synchronize", r.synchronize(int64(dev)))
}

// ABIVersion is the shim ABI this keel speaks: keel_torch.h's KT_ABI_VERSION as this commit has it.
const ABIVersion = 2

// checkABI refuses a shim built for another ABI, in one line naming both and the fix.
func checkABI(path string, shim int64) error {
	if shim != ABIVersion {
		return fmt.Errorf("load %s: the shim speaks ABI version %d, this keel version %d: run `make setup` to rebuild it from this checkout", path, shim, ABIVersion)
	}
	return nil
}
