// Package train runs ONNX graphs on libtorch tensors through gotch, with autograd; it holds the data sets and the training loop.
package train
