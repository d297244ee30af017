package model

import (
	"encoding/json"
	"testing"
)

func TestRopeParametersOfTransformers5(t *testing.T) {
	raw := `{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,
	"num_attention_heads":4,"vocab_size":10,"rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
	"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}}`
	var c Config
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	if c.RopeTheta != 500000 || c.RopeScaling.Kind() != "llama3" || c.RopeScaling.Factor != 8 {
		t.Fatalf("rope_parameters not read: theta %v scaling %+v", c.RopeTheta, c.RopeScaling)
	}
	// The llama3 rule keeps high frequencies, divides low ones by factor and blends the middle band.
	inv := invFreq(&c)
	plain := invFreq(&Config{HeadDim: c.HeadDim, RopeTheta: c.RopeTheta})
	if inv[0] != plain[0] || inv[len(inv)-1] != plain[len(inv)-1]/8 {
		t.Fatalf("llama3 scaling: %v vs %v", inv, plain)
	}
}
