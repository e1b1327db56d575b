// Package train is the trainer: one training step (Step, then AdamW.Apply), the
// training loop with its schedule and checkpoints (Fit) and evaluation, all on a graph
// compiled by an executor behind package engine's API. It is pure Go.
package train
