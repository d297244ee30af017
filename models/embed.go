// Package models holds keel's embedded default model: the persona model keel trains itself (see
// `keel model build`), used whenever a command is given no --model.
package models

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed persona/config.json persona/model.safetensors persona/tokenizer.json persona/tokenizer_config.json persona/generation_config.json
//go:embed persona/axis
var persona embed.FS

// PersonaFiles are the embedded model's files.
var PersonaFiles = []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}

// PersonaSHA256 is the sha256 of the embedded weights (model.safetensors).
func PersonaSHA256() string {
	raw, _ := persona.ReadFile("persona/model.safetensors")
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// Persona returns a folder holding the embedded model and, in its axis/, the model's Assistant Axis, writing them
// under cacheDir (named by the weights' hash, so a new binary never reads an old model) the first time. The
// engine loads folders: it memory-maps weights.
func Persona(cacheDir string) (string, error) {
	dir := filepath.Join(cacheDir, "persona-"+PersonaSHA256()[:16])
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil {
		return dir, personaAxis(dir)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".persona-*")
	if err != nil {
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			return "", fmt.Errorf("embedded model: %w", err)
		}
		if tmp, err = os.MkdirTemp(cacheDir, ".persona-*"); err != nil {
			return "", fmt.Errorf("embedded model: %w", err)
		}
	}
	for _, name := range PersonaFiles {
		raw, err := fs.ReadFile(persona, "persona/"+name)
		if err != nil {
			os.RemoveAll(tmp)
			return "", fmt.Errorf("embedded model: %w", err)
		}
		if err := os.WriteFile(filepath.Join(tmp, name), raw, 0o644); err != nil {
			os.RemoveAll(tmp)
			return "", fmt.Errorf("embedded model: %w", err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	// Another process may have won the race; either copy is the same model.
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, statErr := os.Stat(filepath.Join(dir, "model.safetensors")); statErr != nil {
			return "", fmt.Errorf("embedded model: %w", err)
		}
	}
	return dir, personaAxis(dir)
}

// PersonaAxisFiles are the embedded model's Assistant Axis: `keel axis extract` and `keel axis calibrate` on it,
// as `keel model build` runs them. The folder may also hold capping.json, `keel eval capping`'s figures, whose
// best setting the workbench starts its cap controls at.
var PersonaAxisFiles = []string{"axis.safetensors", "default_vector.safetensors", "calibration.json"}

// personaAxis writes the embedded model's axis folder into its unpacked model folder (modelDir/axis, where every
// model's own axis is looked for) unless it is there.
func personaAxis(modelDir string) error {
	dir := filepath.Join(modelDir, "axis")
	if _, err := os.Stat(filepath.Join(dir, "calibration.json")); err == nil {
		return nil
	}
	tmp, err := os.MkdirTemp(modelDir, ".axis-*")
	if err != nil {
		return fmt.Errorf("embedded axis: %w", err)
	}
	entries, err := fs.ReadDir(persona, "persona/axis")
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("embedded axis: %w", err)
	}
	for _, e := range entries {
		raw, err := fs.ReadFile(persona, "persona/axis/"+e.Name())
		if err == nil {
			err = os.WriteFile(filepath.Join(tmp, e.Name()), raw, 0o644)
		}
		if err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("embedded axis: %w", err)
		}
	}
	os.Chmod(tmp, 0o755)
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, statErr := os.Stat(filepath.Join(dir, "calibration.json")); statErr != nil {
			return fmt.Errorf("embedded axis: %w", err)
		}
	}
	return nil
}
