package workbench

import (
	"os"
	"path/filepath"
	"testing"
)

// Large weights are named by their fingerprint alone (hashing them whole would hold up the first frame); small
// ones by both.
func TestWeightsIdentityHashesOnlySmallModels(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("small weights"))
	f.Close()
	fp, sha, err := weightsIdentity(dir)
	if err != nil || len(fp) != 64 || len(sha) != 64 {
		t.Fatalf("small: fingerprint %q sha %q %v", fp, sha, err)
	}
	if err := os.Truncate(filepath.Join(dir, "model.safetensors"), hashWholeUpTo+1); err != nil { // sparse
		t.Fatal(err)
	}
	fp2, sha2, err := weightsIdentity(dir)
	if err != nil || len(fp2) != 64 || fp2 == fp || sha2 != "" {
		t.Fatalf("large: fingerprint %q sha %q %v", fp2, sha2, err)
	}
	if _, _, err := weightsIdentity(t.TempDir()); err == nil {
		t.Fatal("a folder without weights has an identity")
	}
}
