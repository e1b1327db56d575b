// Package engine is the executor's API: what the trainer, sensitivity scoring and the
// CLI see of an ONNX graph compiled to run with autograd. It is pure Go; the one
// implementation, engine/torch, runs graphs on libtorch through gotch and keeps every
// libtorch type to itself, so packages that only score or train through this API
// build without cgo.
package engine

import (
	"os"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Options configures Compile.
type Options struct {
	// Trainable names the float initializers that get gradients.
	Trainable []string
	// NoFusion runs every node as written, without fusing the node chains PyTorch's
	// exporter writes for GELU and for linear layers.
	NoFusion bool
	// Precision of matrix products and convolutions (see Precision); FP32 by default.
	Precision Precision
	// SquareGrads makes a Program for sensitivity scoring, which needs Σ grad² per
	// weight and not the gradients: ForwardBackward adds the square of each trainable
	// initializer's gradient of the batch to its running sum as soon as backward has
	// produced it, and frees the gradient, so the gradients of the whole model never
	// exist at once. Grad then gives zeros and AddGradSquares has nothing to add;
	// GradSquareSum reads the sums.
	SquareGrads bool
}

// IO describes a graph input or output.
type IO struct {
	Name  string
	Type  int32   // ONNX element type (onnxpb.TensorProto_DataType)
	Shape []int64 // -1 for a dimension without a fixed size; nil if the graph says nothing
}

// StepResult reports one ForwardBackward (or Forward) call.
type StepResult struct {
	N       int       // examples
	Loss    float64   // mean cross-entropy over the N examples (with labels)
	Correct int       // examples whose arg-max logit is the label (with labels)
	Logits  []float32 // N × Classes, row-major
	Classes int
	// Runs is the number of graph runs. MicroBatched is true when the graph's fixed
	// batch size (FixedBatch) differed from N, so the batch ran as Runs micro-batches
	// of that size (the last one padded with zero images whose loss is masked out).
	Runs         int
	MicroBatched bool
}

// Engine compiles graphs and runs work on the thread the executor needs: every
// Program method, Compile and SetSeed must be called inside Do.
type Engine interface {
	// Do runs f on the executor's thread and returns its error (a panic in f comes
	// back as an error). Do must not be called from inside f.
	Do(f func() error) error
	// Compile turns m's graph into a Program (m is only read). It fails on an op
	// outside the supported list, naming the node and the op.
	Compile(m *onnxpb.ModelProto, opt Options) (Program, error)
	// SetSeed seeds the random generator train-mode Dropout draws from.
	SetSeed(seed uint64) error
	// Close stops the engine; close its Programs first.
	Close()
}

// Program is a compiled graph holding its weights in the executor's memory. Values
// cross the API as Go slices (float32 weights, gradients and logits).
type Program interface {
	Inputs() []IO
	Outputs() []IO
	// Params lists the float initializers (the weights), in graph order.
	Params() []string
	// Trainable lists the initializers compiled with gradients.
	Trainable() []string
	// ParamShape returns the shape of a float initializer.
	ParamShape(name string) ([]int64, bool)
	// FixedBatch is the batch size the first input fixes, or 0 if it is dynamic.
	FixedBatch() int
	// Steps is the number of nodes that run at run time (the rest were folded).
	Steps() int

	// Forward runs the graph in eval mode (no gradients, no dropout) on n images
	// (row-major, n × the input's per-example size); with labels (optional) it also
	// counts the correct predictions and the loss.
	Forward(images []float32, labels []int64, n int) (*StepResult, error)
	// ForwardBackward runs the graph in train mode on n images and runs backward
	// from the mean cross-entropy of the first output against labels, accumulating
	// gradients in the trainable initializers. A fixed-batch graph runs in
	// micro-batches whose gradients add up to those of one batch of n.
	ForwardBackward(images []float32, labels []int64, n int) (*StepResult, error)
	// ZeroGrad clears the gradients of every trainable initializer (Grad reads zeros
	// until the next backward).
	ZeroGrad() error
	// Grad returns a copy of a trainable initializer's gradient (zeros if backward
	// has not reached it).
	Grad(name string) ([]float32, error)
	// AddGradSquares adds the square of every trainable initializer's gradient to a
	// running sum kept in the executor's memory (one per initializer, made on first
	// use); GradSquareSum copies one out (zeros if backward never reached it).
	AddGradSquares() error
	GradSquareSum(name string) ([]float32, error)
	// SpillGradSquares (Options.SquareGrads only) writes the running sums to f and
	// frees them until backward needs each again, which reads it back before adding
	// to it (the sums come out the same to the bit); GradSquareSum reads a sum still
	// in f from there. Pass the same f every time and keep it open until Close.
	SpillGradSquares(f *os.File) error

	// Floats returns a copy of a float initializer's current values; SetFloats
	// overwrites them (the gradient is kept).
	Floats(name string) ([]float32, error)
	SetFloats(name string, v []float32) error
	// WriteBack copies the trainable initializers' current values into m's
	// initializers of the same names.
	WriteBack(m *onnxpb.ModelProto) error
	// Close frees the Program's memory.
	Close()
}
