// Package steer holds Assistant-VectorFile vectors and turns them into the engine's interventions: projection,
// additive steering and activation capping, and the files they live in.
package steer
