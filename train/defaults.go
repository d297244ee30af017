package train

// The trainers' default configs: what `keel train` starts from (its flags show these values) and what a run
// given a partial config completes it with (Defaults), plus the settings whose zero is a choice of its own.

// DefaultSFTConfig is SFT's defaults, with a 5% warmup and a 5% held-out split.
func DefaultSFTConfig() SFTConfig {
	c := SFTConfig{WarmupRatio: 0.05, EvalFraction: 0.05}
	c.Defaults()
	return c
}

// DefaultALoLConfig is A-LoL's defaults for the paper's main variant.
func DefaultALoLConfig() ALoLConfig {
	c := ALoLConfig{Algorithm: "a_lol"}
	c.Defaults()
	return c
}

// DefaultPPOConfig is PPO's defaults: the axis reward, PPO-max's running reward normalisation and a KL penalty.
func DefaultPPOConfig() PPOConfig {
	c := PPOConfig{Reward: "axis", KLCoef: 0.05, RewardNormalize: true}
	c.Defaults()
	return c
}
