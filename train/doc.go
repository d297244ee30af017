// Package train runs fine-tunes (SFT, A-LoL, PPO) as background jobs over the engine's autograd.
package train
