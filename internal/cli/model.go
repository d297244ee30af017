package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/engine/torch"
	"github.com/keel-lab/keel/models"
)

// ModelFlags are the flags every command that loads a model shares.
type ModelFlags struct {
	Dir     string    // --model: a model folder (empty: the embedded persona model)
	Device  string    // --device: cpu, cuda, cuda:N, a list of GPUs, or auto
	DType   string    // --dtype: f32, f16 or bf16
	Threads int       // --threads: libtorch CPU threads (0: libtorch's default)
	Offload int       // --offload: decoder layers kept on the CPU beside the GPUs
	Context int       // --context: positions the pre-load fit check sizes the KV cache for
	Stderr  io.Writer // where a GPU placement is reported
}

// Register declares the flags on fs; a GPU placement is reported on fs's output.
func (f *ModelFlags) Register(fs *flag.FlagSet) {
	f.Stderr = fs.Output()
	fs.StringVar(&f.Dir, "model", "", "the model: a Hugging Face folder (config.json, *.safetensors, tokenizer), an id ORG/NAME[@REVISION] read from the Hugging Face cache, or persona (keel's embedded model, the default)")
	fs.StringVar(&f.Device, "device", "cpu", "cpu, cuda, cuda:N, GPUs to split the layers over (cuda:0,cuda:1), or auto (every GPU)")
	fs.StringVar(&f.DType, "dtype", "f32", "compute dtype: f32, f16 or bf16")
	fs.IntVar(&f.Threads, "threads", 0, "libtorch CPU threads (0 = libtorch's default)")
	fs.IntVar(&f.Offload, "offload", 0, "decoder layers kept on the CPU beside the GPU (the last ones)")
	fs.IntVar(&f.Context, "context", 0, "positions per conversation the check before loading sizes the KV cache for (default: 4096, or the model's window when smaller)")
}

// Resolve turns --model into a folder (models.Resolve): empty or "persona" is the embedded model, unpacked once
// into the user's cache; ORG/NAME[@REV] is its snapshot in the Hugging Face cache.
func (f *ModelFlags) Resolve() error {
	dir, err := ResolveModel(f.Dir, f.Stderr)
	if err != nil {
		return err
	}
	f.Dir = dir
	return nil
}

// ResolveModel is models.Resolve with a model the cache lacks fetched from the hub, its progress on progress
// (nil: none).
func ResolveModel(ref string, progress io.Writer) (string, error) {
	return models.Resolve(ref, KeelModelCache(), func() *models.Puller {
		pull := models.NewPuller()
		if progress != nil {
			pull.Progress = ProgressBar(progress, "fetching "+ref)
		}
		return pull
	})
}

// ProgressBar draws bytes done of total on w, at most five times a second, and a last line at the end.
func ProgressBar(w io.Writer, what string) func(done, total int64) {
	var mu sync.Mutex
	start, last := time.Now(), time.Time{}
	return func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if done < total && now.Sub(last) < 200*time.Millisecond {
			return
		}
		last = now
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		rate := float64(done) / max(now.Sub(start).Seconds(), 1e-3) / (1 << 20)
		fmt.Fprintf(w, "\r%s: %5.1f%% %s of %s, %.1f MiB/s   ", what, pct, HumanGiB(done), HumanGiB(total), rate)
		if done >= total {
			fmt.Fprintln(w)
		}
	}
}

// AxisPath reads an --axis value: "persona" is the embedded model's own axis folder (unpacked beside its
// weights); anything else is a path, returned as it is.
func AxisPath(name string) string {
	if name != models.PersonaName {
		return name
	}
	dir, err := models.Persona(KeelModelCache())
	if err != nil {
		return name // opening it names the problem
	}
	return filepath.Join(dir, "axis")
}

// KeelModelCache is where keel unpacks the embedded model: the user's cache folder, keel/models.
func KeelModelCache() string {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	return filepath.Join(cache, "keel", "models")
}

// LoadForRun loads the model for a long command: the context ends on ctrl+c, done frees both.
func (f *ModelFlags) LoadForRun() (context.Context, *model.LM, func(), error) {
	_, lm, err := f.Load()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	return ctx, lm, func() { stop(); lm.Close() }, nil
}

func (f *ModelFlags) Load() (*torch.Runtime, *model.LM, error) {
	if err := f.Resolve(); err != nil {
		return nil, nil, err
	}
	if limit := 4 * runtime.NumCPU(); f.Threads < 0 || f.Threads > limit {
		return nil, nil, UsageError{fmt.Errorf("--threads %d: give 0 (libtorch's default) to %d (4 per core here)", f.Threads, limit)}
	}
	if f.Device != "auto" {
		if _, err := model.ParseDevices(nil, f.Device); err != nil {
			return nil, nil, UsageError{Err: err}
		}
	}
	if _, err := torch.ParseDType(f.DType); err != nil {
		return nil, nil, UsageError{Err: err}
	}
	rt, err := torch.Load()
	if err != nil {
		return nil, nil, err
	}
	if f.Threads > 0 {
		if err := rt.SetNumThreads(f.Threads); err != nil {
			return nil, nil, err
		}
	}
	lm, err := f.LoadDir(rt, f.Dir)
	return rt, lm, err
}

// OneDevice refuses a split placement for a command whose models train or load on one device.
func (f *ModelFlags) OneDevice(command string) error {
	if f.Offload != 0 || strings.Contains(f.Device, ",") || f.Device == "auto" {
		return UsageError{fmt.Errorf("%s trains on one device: give --device cpu, cuda or cuda:N and no --offload (a split model serves, chats and generates)", command)}
	}
	return nil
}

// LoadDir loads the model in dir where --device and --offload place it, reporting what each GPU will hold first.
func (f *ModelFlags) LoadDir(rt *torch.Runtime, dir string) (*model.LM, error) {
	devs, err := model.ParseDevices(rt, f.Device)
	if err != nil {
		return nil, UsageError{err}
	}
	dt, err := torch.ParseDType(f.DType)
	if err != nil {
		return nil, UsageError{err}
	}
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if f.Context < 0 {
		return nil, UsageError{fmt.Errorf("--context %d: give the positions a conversation may reach (0: the default)", f.Context)}
	}
	opts, rep, err := model.Plan(rt, cfg, model.PlacementRequest{Devices: devs, Offload: f.Offload, DType: dt, Context: f.Context})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if rep != nil && f.Stderr != nil {
		for _, d := range rep.Devices {
			fmt.Fprintf(f.Stderr, "keel: %s: %d layers, needs %s of %s available\n", d.Name, d.Layers, HumanGiB(d.Need()), MemoryOf(d))
		}
	}
	return model.Load(rt, dir, opts)
}

func HumanGiB(n int64) string { return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30)) }

// MemoryOf is what a device share is checked against, in words.
func MemoryOf(d model.DeviceShare) string {
	if d.Memory == 0 {
		return "host memory"
	}
	return HumanGiB(d.Memory)
}
