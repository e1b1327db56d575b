package engine

import (
	"fmt"
	"slices"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// supportedOps are the ONNX ops (default domain) the executor (engine/torch) runs,
// sorted. engine/torch's tests check that it runs exactly these, so pure-Go commands
// (inspect, allocate) can refuse a model the trainer would refuse, before any work.
var supportedOps = []string{
	"Abs", "Add", "And", "Cast", "Ceil", "Concat", "Constant", "ConstantOfShape", "Conv", "Div",
	"Dropout", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "Gelu", "Gemm",
	"Greater", "Identity", "LayerNormalization", "Less", "Log", "LogSoftmax", "MatMul", "Max",
	"Min", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "Range", "Reciprocal", "ReduceMean",
	"ReduceSum", "Relu", "Reshape", "ScatterND", "Shape", "Sigmoid", "Size", "Slice", "Softmax",
	"Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "Transpose", "Unsqueeze", "Where",
}

// SupportedOps returns the ONNX ops (default domain) the executor runs, sorted.
func SupportedOps() []string { return slices.Clone(supportedOps) }

// Supports reports whether the executor runs op of domain ("" or "ai.onnx").
func Supports(domain, op string) bool {
	if domain != "" && domain != "ai.onnx" {
		return false
	}
	_, ok := slices.BinarySearch(supportedOps, op)
	return ok
}

// CheckOps returns an error naming the first node of g whose op the executor does not
// run (the trainer would refuse the model when it compiles it).
func CheckOps(g *onnxpb.GraphProto) error {
	for _, n := range g.GetNode() {
		if Supports(n.GetDomain(), n.GetOpType()) {
			continue
		}
		name := n.GetName()
		if name == "" && len(n.GetOutput()) > 0 {
			name = n.GetOutput()[0]
		}
		op := n.GetOpType()
		if d := n.GetDomain(); d != "" && d != "ai.onnx" {
			op = d + "." + op
		}
		return fmt.Errorf("node %q: op %s is not supported by sptctl's training executor, so sptctl cannot tune this model", name, op)
	}
	return nil
}
