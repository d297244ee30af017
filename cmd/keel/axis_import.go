package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/keel-lab/keel/internal/cli"
	"github.com/keel-lab/keel/probes"
	"github.com/keel-lab/keel/steer"
	"github.com/keel-lab/keel/steer/ptfile"
)

// runAxisImport: keel axis import FILE.pt... --out DIR [--model-id NAME] [--n-layers N]
//
// The paper's released files: assistant_axis.pt and default_vector.pt ([layers, d] tensors), role_vectors/*.pt
// (the same shape, one per role) and capping_config.pt (a dict of role-ward vectors and experiments). Each
// becomes a keel vector file in DIR with its header; caps go to DIR/caps/<id>.safetensors in keel's
// convention (a floor on the +axis projection).
func runAxisImport(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	out := fs.String("out", "", "folder for the keel vector files")
	modelID := fs.String("model-id", "", "the model the files are for (default: the folder the first file is in)")
	nLayers := fs.Int("n-layers", 0, "the model's layer count, for capping_config.pt (default: from an axis imported alongside)")
	force := fs.Bool("force", false, "replace vector files already in --out")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() == 0 {
		return cli.Usagef("usage: keel axis import FILE.pt... --out DIR")
	}
	if *modelID == "" {
		*modelID = filepath.Base(filepath.Dir(absPath(fs.Arg(0))))
	}

	type loaded struct {
		path string
		v    any
	}
	var files []loaded
	for _, path := range fs.Args() {
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		v, err := ptfile.Read(raw, path)
		if err != nil {
			return err
		}
		if t, ok := v.(*ptfile.Tensor); ok && len(t.Shape) == 2 && *nLayers == 0 {
			*nLayers = int(t.Shape[0])
		}
		files = append(files, loaded{path, v})
	}
	// A model of the paper's table is named by its Hugging Face id (the release's folder "qwen-3-32b" is
	// Qwen/Qwen3-32B), so that loading it finds its analysis layer and cap setting; files of another layer count
	// are not that model's and keep the name given.
	paper, isPaper := probes.PaperModelFor(*modelID)
	if isPaper && (*nLayers == 0 || *nLayers == paper.Layers) {
		*modelID, *nLayers = paper.ID, paper.Layers
	} else {
		isPaper = false
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		written, err := steer.ImportPaperFile(f.path, f.v, *out, *modelID, *nLayers, *force)
		if err != nil {
			return err
		}
		for _, w := range written {
			fmt.Fprintf(stdout, "%s -> %s\n", f.path, w)
		}
	}
	if isPaper {
		cap := paper.Cap
		if cap == "" {
			cap = "none calibrated in the paper"
		}
		fmt.Fprintf(stdout, "%s (the paper's table): analysis layer %d of %d (plotted and steered there), cap %s\n", paper.ID, paper.TargetLayer, paper.Layers, cap)
	}
	return nil
}
