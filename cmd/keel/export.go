package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/keel-lab/keel/engine/gguf"
	"github.com/keel-lab/keel/engine/model"
	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/steer"
)

// runExport: keel export gguf --model DIR --out FILE [--dtype f32|f16]
//
//	keel export control-vector --axis FILE --out FILE [--scale S] [--layers A:B] [--model-hint ARCH]
func runExport(sub string, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var mf cli.ModelFlags
	mf.Register(fs)
	out := fs.String("out", "", "output .gguf file")
	gdtype := fs.String("gguf-dtype", "f32", "gguf: tensor type, f32 or f16")
	axisPath := fs.String("axis", "", "control-vector: the axis file")
	scale := fs.Float64("scale", 1, "control-vector: multiplier of every direction")
	layers := fs.String("layers", "", "control-vector: layer range A:B (Python slice, end excluded; default all but 0)")
	hint := fs.String("model-hint", "llama", "control-vector: llama.cpp architecture name of the model")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return cli.Usagef("--out FILE is required")
	}
	switch sub {
	case "gguf":
		dt := gguf.GGMLF32
		switch *gdtype {
		case "f32":
		case "f16":
			dt = gguf.GGMLF16
		default:
			return cli.Usagef("--gguf-dtype %q: use f32 or f16", *gdtype)
		}
		_, lm, err := mf.Load()
		if err != nil {
			return err
		}
		defer lm.Close()
		if err := gguf.ExportModel(lm.Model, lm.Tokenizer, *out, dt); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", *out)
		return nil
	case "control-vector":
		if *axisPath == "" {
			return cli.Usagef("--axis FILE is required")
		}
		a, err := steer.LoadVectorFile(*axisPath)
		if err != nil {
			return err
		}
		dirs := map[int][]float32{}
		lo, hi := 1, 1<<30
		if *layers != "" {
			a0, b0, ok := strings.Cut(*layers, ":")
			var e1, e2 error
			lo, e1 = strconv.Atoi(a0)
			hi, e2 = strconv.Atoi(b0)
			if !ok || e1 != nil || e2 != nil || lo < 0 || hi <= lo {
				return cli.Usagef("--layers %q: want A:B with A < B", *layers)
			}
		}
		for l, v := range a.Layers {
			if l >= lo && l < hi && l >= 1 {
				dirs[l] = v
			}
		}
		if len(dirs) == 0 {
			return fmt.Errorf("%s: no layers in %s (layer 0 has no llama.cpp slot)", *axisPath, *layers)
		}
		if m := a.Model; m != "" && *hint == "llama" {
			if cfg, err := model.ReadConfig(m); err == nil {
				if name := gguf.ArchName(cfg.Architecture()); name != "" {
					*hint = name
				}
			}
		}
		if err := gguf.ExportControlVector(*out, *hint, dirs, *scale); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (%d layers)\n", *out, len(dirs))
		return nil
	}
	return cli.Usagef("unknown export %q: gguf or control-vector", sub)
}
