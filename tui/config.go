package tui

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/adrg/xdg"
	"github.com/charmbracelet/bubbles/key"

	"github.com/keel-lab/keel/workbench"
)

// Config is what $XDG_CONFIG_HOME/keel/config.json may set:
//
//	{"temperature": 0.7, "top_p": 0.9, "max_tokens": 256, "mouse": false, "tint": true,
//	 "keys": {"toggle_cap": ["ctrl+k"], "jobs": ["ctrl+o", "f4"]}}
type Config struct {
	Sampling workbench.Sampling
	Keys     KeyMap
	Mouse    bool
	Tint     bool
}

// DefaultConfig is keel's settings before the config file.
func DefaultConfig() Config {
	return Config{Sampling: workbench.DefaultSampling(), Keys: DefaultKeyMap(), Tint: true}
}

// LoadConfig applies the config file, when there is one, over cfg.
func LoadConfig(cfg *Config) error {
	path, err := xdg.SearchConfigFile("keel/config.json")
	if err != nil {
		return nil // none: the defaults
	}
	return ReadConfig(path, cfg)
}

// ReadConfig applies one config file over cfg; a bad file is one clear error naming it.
func ReadConfig(path string, cfg *Config) error {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var f struct {
		Temperature *float64            `json:"temperature"`
		TopP        *float64            `json:"top_p"`
		MaxTokens   *int                `json:"max_tokens"`
		Mouse       *bool               `json:"mouse"`
		Tint        *bool               `json:"tint"`
		Keys        map[string][]string `json:"keys"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return fmt.Errorf("%s: %v: fix the JSON or remove the file", path, err)
	}
	if f.Temperature != nil {
		cfg.Sampling.Temperature = *f.Temperature
	}
	if f.TopP != nil {
		cfg.Sampling.TopP = *f.TopP
	}
	if f.MaxTokens != nil {
		cfg.Sampling.MaxTokens = *f.MaxTokens
	}
	if f.Mouse != nil {
		cfg.Mouse = *f.Mouse
	}
	if f.Tint != nil {
		cfg.Tint = *f.Tint
	}
	k := &cfg.Keys
	bindings := map[string]*key.Binding{"send": &k.Send, "newline": &k.Newline, "interrupt": &k.Interrupt, "escape": &k.Escape,
		"help": &k.Help, "toggle_cap": &k.ToggleCap, "toggle_steer": &k.ToggleStr, "layer_up": &k.LayerUp, "layer_down": &k.LayerDown,
		"jobs": &k.Jobs, "mouse": &k.Mouse, "scroll_up": &k.ScrollUp, "scroll_down": &k.ScrollDown, "redraw": &k.Redraw, "quit": &k.Quit,
		"plot_mode": &k.PlotMode, "pan_back": &k.PanBack, "pan_forward": &k.PanFwd}
	for name, keys := range f.Keys {
		b, ok := bindings[name]
		if !ok || len(keys) == 0 {
			return fmt.Errorf("%s: key binding %q: the names are send, newline, interrupt, escape, help, toggle_cap, toggle_steer, layer_up, layer_down, jobs, mouse, scroll_up, scroll_down, redraw, quit, plot_mode, pan_back, pan_forward, each with a list of keys", path, name)
		}
		b.SetKeys(keys...)
		b.SetHelp(keys[0], b.Help().Desc)
	}
	if cfg.Sampling.MaxTokens < 1 || cfg.Sampling.TopP <= 0 || cfg.Sampling.TopP > 1 || cfg.Sampling.Temperature < 0 {
		return fmt.Errorf("%s: temperature >= 0, top_p in (0, 1] and max_tokens >= 1, please", path)
	}
	return nil
}
