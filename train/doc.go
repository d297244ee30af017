// Package train is keel's fine-tuning: four trainers (SFT, a reward model, A-LoL, PPO), each its loss and its
// data over one set-up and one loop.
//
// Read it in this order:
//   - setup.go: startTraining, what every trainer does once its model is loaded (LoRA or every weight,
//     gradients, AdamW, the loop opened and resumed), heldOut (the one held-out rule) and batchAt (the one
//     batch order);
//   - loop.go: stepLoop, the one training loop, top to bottom: resume, pause, cancel, per-step metrics,
//     checkpoints, the final weights;
//   - sft.go, rm.go, alol_train.go, ppo_train.go: each trainer's config, data and step; A-LoL's data and
//     advantages are in alol_data.go and alol_advantage.go, its loss in alol.go, PPO's in ppo.go;
//   - reward.go and rmreward.go: the Reward interface and the rewards that need nothing of the persona
//     domain (a program, a reward model, the axis); evals.ResolveReward reads a --reward spec into them;
//   - job.go, checkpoint.go, detach.go: a run as a folder (config, metrics, log, atomic checkpoints) that
//     `keel jobs` watches, pauses, resumes and cancels from another process.
//
// train knows nothing of the axis probes or views: a reward that needs the axis is handed in.
package train
