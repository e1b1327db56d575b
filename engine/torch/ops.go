package torch

import (
	"sort"

	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// The ONNX operators, with their semantics at opsets 13-17 (and the attribute forms of
// earlier opsets where exporters still write them). Each op is compiled once per node
// (attributes parsed) into a kernel. A kernel computes in Go memory when all its inputs
// are host values and it has a host form; otherwise it runs libtorch ops.

// nodeCtx is what an op sees at compile time.
type nodeCtx struct {
	n      *onnxpb.NodeProto
	name   string
	opset  int64
	static []value // inputs known at compile time (zero value otherwise)
}

// The attribute readers are surgery's, on the node being compiled.

func (c *nodeCtx) attr(name string) *onnxpb.AttributeProto { return surgery.Attr(c.n, name) }

func (c *nodeCtx) int(name string, def int64) int64 { return surgery.AttrInt(c.n, name, def) }

func (c *nodeCtx) ints(name string) ([]int64, bool) {
	return surgery.AttrInts(c.n, name), c.attr(name) != nil
}

func (c *nodeCtx) float(name string, def float32) float32 { return surgery.AttrFloat(c.n, name, def) }

func (c *nodeCtx) str(name, def string) string { return surgery.AttrString(c.n, name, def) }

// outputUsed reports whether output k is named (consumers are not known yet).
func (c *nodeCtx) outputNamed(k int) bool {
	return k < len(c.n.GetOutput()) && c.n.GetOutput()[k] != ""
}

type opFunc func(c *nodeCtx) (kernel, error)

var ops map[string]opFunc

// SupportedOps lists the ONNX ops the executor runs.
func SupportedOps() []string {
	out := make([]string, 0, len(ops))
	for k := range ops {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func init() {
	ops = map[string]opFunc{
		"Add": binaryOp("Add"), "Sub": binaryOp("Sub"), "Mul": binaryOp("Mul"), "Div": binaryOp("Div"),
		"Pow": opPow, "Equal": binaryOp("Equal"), "Less": binaryOp("Less"), "Greater": binaryOp("Greater"),
		"And": binaryOp("And"), "Or": binaryOp("Or"), "Max": variadic("Max"), "Min": variadic("Min"),
		"Sqrt": unary("Sqrt"), "Erf": unary("Erf"), "Tanh": unary("Tanh"), "Relu": unary("Relu"),
		"Sigmoid": unary("Sigmoid"), "Neg": unary("Neg"), "Exp": unary("Exp"), "Log": unary("Log"),
		"Abs": unary("Abs"), "Reciprocal": unary("Reciprocal"), "Floor": unary("Floor"),
		"Ceil": unary("Ceil"), "Not": unary("Not"),
		"Gelu": opGelu, "MatMul": opMatMul, "Gemm": opGemm, "Conv": opConv,
		"Reshape": opReshape, "Flatten": opFlatten, "Transpose": opTranspose, "Concat": opConcat,
		"Split": opSplit, "Slice": opSlice, "Gather": opGather, "Shape": opShape, "Size": opSize,
		"Unsqueeze": opUnsqueeze, "Squeeze": opSqueeze, "Expand": opExpand, "Where": opWhere,
		"Cast": opCast, "Constant": opConstant, "ConstantOfShape": opConstantOfShape,
		"Identity": opIdentity, "ReduceMean": opReduce("ReduceMean"), "ReduceSum": opReduce("ReduceSum"),
		"LayerNormalization": opLayerNorm, "Softmax": opSoftmax(false), "LogSoftmax": opSoftmax(true),
		"Dropout": opDropout, "ScatterND": opScatterND, "Range": opRange, "Pad": opPad, "Tile": opTile,
	}
}

// ---------------------------------------------------------------- helpers

func one(t *ts.Tensor, err error) ([]value, error) {
	if err != nil {
		return nil, torchErr(err)
	}
	return []value{{t: t}}, nil
}

func hostOne(h *constfold.Tensor, err error) ([]value, error) {
	if err != nil {
		return nil, err
	}
	return []value{{h: h}}, nil
}

func allHost(in []value) bool {
	for _, v := range in {
		if v.t != nil {
			return false
		}
	}
	return true
}

// optInts reads an optional int64 list input (k) or, when absent, the attribute.
func optInts(r *runCtx, in []value, k int) ([]int64, bool, error) {
	if k >= len(in) || in[k].none() {
		return nil, false, nil
	}
	h, err := r.H(in[k])
	if err != nil {
		return nil, false, err
	}
	return h.Ints(), true, nil
}

// reshapeT reshapes (a view when possible); a scalar shape is handled apart because
// gotch's wrappers take the address of the first element of every list.
func reshapeT(t *ts.Tensor, shape []int64) (*ts.Tensor, error) {
	if len(shape) == 0 {
		flat, err := t.Reshape([]int64{1}, false)
		if err != nil {
			return nil, torchErr(err)
		}
		defer flat.Drop()
		out, err := flat.Select(0, 0, false)
		return out, torchErr(err)
	}
	out, err := t.Reshape(shape, false)
	return out, torchErr(err)
}

func clone(t *ts.Tensor) ([]value, error) {
	out, err := t.ShallowClone()
	return one(out, err)
}

func floatScalar(v float64) *ts.Scalar { return ts.FloatScalar(v) }
