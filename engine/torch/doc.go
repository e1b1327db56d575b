// Package torch is sptctl's executor: it compiles an ONNX graph once into an ordered
// list of steps that run on libtorch tensors through gotch, with autograd, and
// implements package engine's API. No libtorch or gotch type leaves this package:
// callers feed and read Go slices.
package torch
