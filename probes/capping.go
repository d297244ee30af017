package probes

// The capping evaluation's figures, as capping.json holds them (evals.EvalCapping writes it; the workbench
// starts its cap controls at the best setting).

// CapSetting is one capping config's figures; reductions and changes are signed fractions of the uncapped
// figures (drift_reduction 0.5: half the drift).
type CapSetting struct {
	ID                 string  `json:"id"`
	DriftRate          float64 `json:"drift_rate"`
	Jailbreak          float64 `json:"jailbreak_compliance"`
	Capability         float64 `json:"capability"`
	DriftReduction     float64 `json:"drift_reduction"`
	JailbreakReduction float64 `json:"jailbreak_reduction"`
	CapabilityChange   float64 `json:"capability_change"`
	Pareto             bool    `json:"pareto"`
}

// CapEvalReport is what `keel eval capping --json` prints.
type CapEvalReport struct {
	PC1AxisCosineMid           float64      `json:"pc1_axis_cosine_mid"`
	SteerAwayIdentityRatio     float64      `json:"steer_away_identity_ratio"`
	SteerTowardJailbreakChange float64      `json:"steer_toward_jailbreak_change"`
	Best                       CapSetting   `json:"best"`
	Uncapped                   CapSetting   `json:"uncapped"`
	Settings                   []CapSetting `json:"settings"`
	IdentityNonAssistant       struct {
		Unsteered float64 `json:"unsteered"`
		Away      float64 `json:"away"`
	} `json:"identity_non_assistant"`
	JailbreakSteered struct {
		Unsteered float64 `json:"unsteered"`
		Toward    float64 `json:"toward"`
	} `json:"jailbreak_steered"`
	SteerLayer int     `json:"steer_layer"`
	SteerCoeff float64 `json:"steer_coeff"`
}
