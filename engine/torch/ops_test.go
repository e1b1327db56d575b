package torch

import (
	"fmt"
	"github.com/sptctl/sptctl/engine"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// Op semantics on small hand-built graphs. Each case runs twice: with its data as
// graph inputs (libtorch kernels) and as Constant nodes (Go-memory kernels and
// compile-time folding); both must give the expected values.

type arr struct {
	shape []int64
	f     []float32 // float data, or
	i     []int64   // int64 data
	b     bool      // with i: BOOL
}

func fa(shape []int64, v ...float32) arr { return arr{shape: shape, f: v} }
func ia(shape []int64, v ...int64) arr   { return arr{shape: shape, i: v} }

func iota32(n int) []float32 {
	v := make([]float32, n)
	for k := range v {
		v[k] = float32(k)
	}
	return v
}

func (a arr) proto(name string) *onnxpb.TensorProto {
	var t *onnxpb.TensorProto
	var err error
	switch {
	case a.f != nil:
		t, err = onnxio.NewFloat(name, a.shape, a.f)
	case a.b:
		raw := make([]byte, len(a.i))
		for k, v := range a.i {
			raw[k] = byte(v)
		}
		t = &onnxpb.TensorProto{Name: proto.String(name), DataType: proto.Int32(int32(onnxpb.TensorProto_BOOL)), Dims: a.shape, RawData: raw}
	default:
		t, err = onnxio.NewInt64(name, a.shape, a.i)
	}
	if err != nil {
		panic(err)
	}
	return t
}

func (a arr) elemType() int32 {
	switch {
	case a.f != nil:
		return onnxio.Float
	case a.b:
		return int32(onnxpb.TensorProto_BOOL)
	}
	return onnxio.Int64
}

func node(op string, in, out []string, attrs ...*onnxpb.AttributeProto) *onnxpb.NodeProto {
	return &onnxpb.NodeProto{OpType: proto.String(op), Name: proto.String("/" + op), Input: in, Output: out, Attribute: attrs}
}

func attrI(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

func attrIs(name string, v ...int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INTS.Enum(), Ints: v}
}

func attrF(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_FLOAT.Enum(), F: proto.Float32(v)}
}

func attrS(name, v string) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_STRING.Enum(), S: []byte(v)}
}

func attrT(name string, a arr) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_TENSOR.Enum(), T: a.proto("")}
}

// model builds a graph: data (names → arrays) become graph inputs (asInputs) or
// Constant nodes; consts always become Constant nodes; the output is "y".
func model(opset int64, nodes []*onnxpb.NodeProto, data, consts map[string]arr, asInputs bool) *onnxpb.ModelProto {
	g := &onnxpb.GraphProto{Name: proto.String("t")}
	var pre []*onnxpb.NodeProto
	for name, a := range consts {
		pre = append(pre, node("Constant", nil, []string{name}, attrT("value", a)))
	}
	for name, a := range data {
		if asInputs {
			dims := make([]*onnxpb.TensorShapeProto_Dimension, len(a.shape))
			for k, d := range a.shape {
				dims[k] = &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}}
			}
			g.Input = append(g.Input, &onnxpb.ValueInfoProto{Name: proto.String(name), Type: &onnxpb.TypeProto{
				Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
					ElemType: proto.Int32(a.elemType()), Shape: &onnxpb.TensorShapeProto{Dim: dims}}}}})
		} else {
			pre = append(pre, node("Constant", nil, []string{name}, attrT("value", a)))
		}
	}
	g.Node = append(pre, nodes...)
	g.Output = []*onnxpb.ValueInfoProto{{Name: proto.String("y")}}
	return &onnxpb.ModelProto{IrVersion: proto.Int64(8), Graph: g,
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(opset)}}}
}

func feeds(data map[string]arr) (map[string]*ts.Tensor, error) {
	out := map[string]*ts.Tensor{}
	for name, a := range data {
		var t *ts.Tensor
		var err error
		if a.f != nil {
			t, err = tensorFromFloats(a.f, a.shape)
		} else {
			h := constfold.Ints64(a.shape, a.i)
			if a.b {
				h.DType = int32(onnxpb.TensorProto_BOOL)
			}
			t, err = tensorFromHost(h)
		}
		if err != nil {
			return nil, err
		}
		out[name] = t
	}
	return out, nil
}

type opCase struct {
	name   string
	opset  int64
	nodes  []*onnxpb.NodeProto
	data   map[string]arr
	consts map[string]arr
	want   arr
	tol    float64
}

func runCase(c opCase, asInputs bool) (*constfold.Tensor, error) {
	opset := c.opset
	if opset == 0 {
		opset = 17
	}
	m := model(opset, c.nodes, c.data, c.consts, asInputs)
	p, err := Compile(m, engine.Options{})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	in := map[string]*ts.Tensor{}
	if asInputs {
		if in, err = feeds(c.data); err != nil {
			return nil, err
		}
		defer func() {
			for _, t := range in {
				t.Drop()
			}
		}()
	}
	outs, err := p.run(in, false)
	if err != nil {
		return nil, err
	}
	defer outs["y"].Drop()
	return hostFromTensor(outs["y"])
}

func checkArr(got *constfold.Tensor, want arr, tol float64) error {
	if fmt.Sprint(got.Shape) != fmt.Sprint(want.shape) && !(len(got.Shape) == 0 && len(want.shape) == 0) {
		return fmt.Errorf("shape %v, want %v", got.Shape, want.shape)
	}
	if want.f != nil {
		if !got.IsFloat() {
			return fmt.Errorf("got %s, want float", constfold.TypeName(got.DType))
		}
		for k, v := range want.f {
			if math.Abs(got.F[k]-float64(v)) > tol {
				return fmt.Errorf("value %d = %g, want %g (all %v)", k, got.F[k], v, got.F)
			}
		}
		return nil
	}
	if got.IsFloat() {
		return fmt.Errorf("got %s, want integers", constfold.TypeName(got.DType))
	}
	if want.b != (got.DType == int32(onnxpb.TensorProto_BOOL)) {
		return fmt.Errorf("got %s, want bool %v", constfold.TypeName(got.DType), want.b)
	}
	if fmt.Sprint(got.I) != fmt.Sprint(want.i) {
		return fmt.Errorf("values %v, want %v", got.I, want.i)
	}
	return nil
}

func x234() arr { return fa([]int64{2, 3, 4}, iota32(24)...) }

// take picks x234 elements by (b, r, c) index lists.
func take234(bs, rs, cs []int) []float32 {
	var out []float32
	for _, b := range bs {
		for _, r := range rs {
			for _, c := range cs {
				out = append(out, float32(b*12+r*4+c))
			}
		}
	}
	return out
}

func opCases() []opCase {
	in := []string{"x"}
	y := []string{"y"}
	return []opCase{
		{name: "Slice negative steps and clamping",
			nodes:  []*onnxpb.NodeProto{node("Slice", []string{"x", "s", "e", "a", "st"}, y)},
			data:   map[string]arr{"x": x234()},
			consts: map[string]arr{"s": ia([]int64{2}, -1, 5), "e": ia([]int64{2}, -1000, -10), "a": ia([]int64{2}, 2, 1), "st": ia([]int64{2}, -2, -1)},
			want:   fa([]int64{2, 3, 2}, take234([]int{0, 1}, []int{2, 1, 0}, []int{3, 1})...)},
		{name: "Slice INT64_MAX end, default axes",
			nodes:  []*onnxpb.NodeProto{node("Slice", []string{"x", "s", "e", "", "st"}, y)},
			data:   map[string]arr{"x": x234()},
			consts: map[string]arr{"s": ia([]int64{3}, 1, 0, 1), "e": ia([]int64{3}, math.MaxInt64, -1, math.MaxInt64), "st": ia([]int64{3}, 1, 1, 2)},
			want:   fa([]int64{1, 2, 2}, take234([]int{1}, []int{0, 1}, []int{1, 3})...)},
		{name: "Slice opset 9 attributes", opset: 9,
			nodes: []*onnxpb.NodeProto{node("Slice", in, y, attrIs("starts", 1), attrIs("ends", 3), attrIs("axes", -1))},
			data:  map[string]arr{"x": x234()},
			want:  fa([]int64{2, 3, 2}, take234([]int{0, 1}, []int{0, 1, 2}, []int{1, 2})...)},
		{name: "Gather negative indices axis 1",
			nodes:  []*onnxpb.NodeProto{node("Gather", []string{"x", "i"}, y, attrI("axis", 1))},
			data:   map[string]arr{"x": x234()},
			consts: map[string]arr{"i": ia([]int64{1, 2}, -1, 0)},
			want:   fa([]int64{2, 1, 2, 4}, take234([]int{0, 1}, []int{2, 0}, []int{0, 1, 2, 3})...)},
		{name: "Gather scalar index",
			nodes:  []*onnxpb.NodeProto{node("Gather", []string{"x", "i"}, y, attrI("axis", -1))},
			data:   map[string]arr{"x": x234()},
			consts: map[string]arr{"i": ia(nil, -3)},
			want:   fa([]int64{2, 3}, take234([]int{0, 1}, []int{0, 1, 2}, []int{1})...)},
		{name: "Gather indices as data",
			nodes: []*onnxpb.NodeProto{node("Gather", []string{"x", "i"}, y, attrI("axis", 0))},
			data:  map[string]arr{"x": x234(), "i": ia([]int64{3}, 1, -2, 1)},
			want:  fa([]int64{3, 3, 4}, take234([]int{1, 0, 1}, []int{0, 1, 2}, []int{0, 1, 2, 3})...)},
		{name: "Split input sizes, outputs swapped",
			nodes: []*onnxpb.NodeProto{node("Split", []string{"x", "s"}, []string{"a", "b"}, attrI("axis", -1)),
				node("Concat", []string{"b", "a"}, y, attrI("axis", -1))},
			data:   map[string]arr{"x": fa([]int64{2, 4}, iota32(8)...)},
			consts: map[string]arr{"s": ia([]int64{2}, 1, 3)},
			want:   fa([]int64{2, 4}, 1, 2, 3, 0, 5, 6, 7, 4)},
		{name: "Split equal parts, one output unused",
			nodes: []*onnxpb.NodeProto{node("Split", in, []string{"a", "b"}, attrI("axis", 1)),
				node("Identity", []string{"b"}, y)},
			data: map[string]arr{"x": fa([]int64{2, 4}, iota32(8)...)},
			want: fa([]int64{2, 2}, 2, 3, 6, 7)},
		{name: "Split opset 11 attribute", opset: 11,
			nodes: []*onnxpb.NodeProto{node("Split", in, []string{"a", "b"}, attrI("axis", 0), attrIs("split", 1, 1)),
				node("Sub", []string{"b", "a"}, y)},
			data: map[string]arr{"x": fa([]int64{2, 2}, 1, 2, 5, 9)},
			want: fa([]int64{1, 2}, 4, 7)},
		{name: "Reshape 0 and -1",
			nodes:  []*onnxpb.NodeProto{node("Reshape", []string{"x", "s"}, y)},
			data:   map[string]arr{"x": x234()},
			consts: map[string]arr{"s": ia([]int64{3}, 0, -1, 2)},
			want:   fa([]int64{2, 6, 2}, iota32(24)...)},
		{name: "Reshape to scalar",
			nodes:  []*onnxpb.NodeProto{node("Reshape", []string{"x", "s"}, y)},
			data:   map[string]arr{"x": fa([]int64{1, 1}, 5)},
			consts: map[string]arr{"s": ia([]int64{0})},
			want:   fa(nil, 5)},
		{name: "Flatten negative axis",
			nodes: []*onnxpb.NodeProto{node("Flatten", in, y, attrI("axis", -1))},
			data:  map[string]arr{"x": x234()},
			want:  fa([]int64{6, 4}, iota32(24)...)},
		{name: "Transpose default perm",
			nodes: []*onnxpb.NodeProto{node("Transpose", in, y)},
			data:  map[string]arr{"x": fa([]int64{2, 3}, iota32(6)...)},
			want:  fa([]int64{3, 2}, 0, 3, 1, 4, 2, 5)},
		{name: "Unsqueeze then Squeeze",
			nodes: []*onnxpb.NodeProto{node("Unsqueeze", []string{"x", "u"}, []string{"t"}),
				node("Shape", []string{"t"}, []string{"s"}), node("Squeeze", []string{"t", "q"}, []string{"t2"}),
				node("Shape", []string{"t2"}, []string{"s2"}), node("Concat", []string{"s", "s2"}, y, attrI("axis", 0))},
			data:   map[string]arr{"x": x234()},
			consts: map[string]arr{"u": ia([]int64{2}, -1, 0), "q": ia([]int64{1}, 4)},
			want:   ia([]int64{9}, 1, 2, 3, 4, 1, 1, 2, 3, 4)},
		{name: "Squeeze opset 11 attribute", opset: 11,
			nodes: []*onnxpb.NodeProto{node("Squeeze", in, y, attrIs("axes", 0, 2))},
			data:  map[string]arr{"x": fa([]int64{1, 2, 1}, 3, 4)},
			want:  fa([]int64{2}, 3, 4)},
		{name: "Shape start end",
			nodes: []*onnxpb.NodeProto{node("Shape", in, y, attrI("start", -2), attrI("end", 100))},
			data:  map[string]arr{"x": x234()},
			want:  ia([]int64{2}, 3, 4)},
		{name: "Expand bidirectional",
			nodes:  []*onnxpb.NodeProto{node("Expand", []string{"x", "s"}, y)},
			data:   map[string]arr{"x": fa([]int64{3, 1}, 1, 2, 3)},
			consts: map[string]arr{"s": ia([]int64{3}, 2, 1, 2)},
			want:   fa([]int64{2, 3, 2}, 1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3)},
		{name: "Where broadcasting",
			nodes: []*onnxpb.NodeProto{node("Where", []string{"c", "a", "b"}, y)},
			data: map[string]arr{"c": {shape: []int64{2}, i: []int64{1, 0}, b: true},
				"a": fa([]int64{2, 1}, 1, 2), "b": fa(nil, -1)},
			want: fa([]int64{2, 2}, 1, -1, 2, -1)},
		{name: "Equal gives bool",
			nodes: []*onnxpb.NodeProto{node("Equal", []string{"a", "b"}, y)},
			data:  map[string]arr{"a": ia([]int64{3}, 1, -1, 3), "b": ia(nil, -1)},
			want:  arr{shape: []int64{3}, i: []int64{0, 1, 0}, b: true}},
		{name: "Max of three",
			nodes: []*onnxpb.NodeProto{node("Max", []string{"a", "b", "c"}, y)},
			data:  map[string]arr{"a": fa([]int64{3}, 1, 5, -2), "b": fa(nil, 0), "c": fa([]int64{1, 3}, 2, 0, -3)},
			want:  fa([]int64{1, 3}, 2, 5, 0)},
		{name: "integer Div truncates",
			nodes: []*onnxpb.NodeProto{node("Div", []string{"a", "b"}, y)},
			data:  map[string]arr{"a": ia([]int64{2}, -7, 7), "b": ia(nil, 2)},
			want:  ia([]int64{2}, -3, 3)},
		{name: "Cast float to int64 truncates",
			nodes: []*onnxpb.NodeProto{node("Cast", in, y, attrI("to", int64(onnxpb.TensorProto_INT64)))},
			data:  map[string]arr{"x": fa([]int64{3}, -1.7, 2.9, 0)},
			want:  ia([]int64{3}, -1, 2, 0)},
		{name: "Cast int to float",
			nodes: []*onnxpb.NodeProto{node("Cast", in, y, attrI("to", int64(onnxpb.TensorProto_FLOAT)))},
			data:  map[string]arr{"x": ia([]int64{2}, -3, 8)},
			want:  fa([]int64{2}, -3, 8)},
		{name: "ConstantOfShape int64",
			nodes:  []*onnxpb.NodeProto{node("ConstantOfShape", []string{"s"}, y, attrT("value", ia([]int64{1}, 7)))},
			consts: map[string]arr{"s": ia([]int64{2}, 2, 2)},
			want:   ia([]int64{2, 2}, 7, 7, 7, 7)},
		{name: "ConstantOfShape of a Shape, float default",
			nodes: []*onnxpb.NodeProto{node("Shape", in, []string{"s"}), node("ConstantOfShape", []string{"s"}, []string{"z"}),
				node("Add", []string{"x", "z"}, y)},
			data: map[string]arr{"x": fa([]int64{2}, 1, 2)},
			want: fa([]int64{2}, 1, 2)},
		{name: "Range int",
			nodes:  []*onnxpb.NodeProto{node("Range", []string{"a", "b", "c"}, y)},
			consts: map[string]arr{"a": ia(nil, 10), "b": ia(nil, 3), "c": ia(nil, -3)},
			want:   ia([]int64{3}, 10, 7, 4)},
		{name: "Range float",
			nodes:  []*onnxpb.NodeProto{node("Range", []string{"a", "b", "c"}, y)},
			consts: map[string]arr{"a": fa(nil, 0), "b": fa(nil, 1), "c": fa(nil, 0.25)},
			want:   fa([]int64{4}, 0, 0.25, 0.5, 0.75)},
		{name: "Pad constant value, crop",
			nodes:  []*onnxpb.NodeProto{node("Pad", []string{"x", "p", "v"}, y)},
			data:   map[string]arr{"x": fa([]int64{2, 3}, iota32(6)...)},
			consts: map[string]arr{"p": ia([]int64{4}, 0, 1, 0, -1), "v": fa(nil, 1.5)},
			want:   fa([]int64{2, 3}, 1.5, 0, 1, 1.5, 3, 4)},
		{name: "Tile",
			nodes:  []*onnxpb.NodeProto{node("Tile", []string{"x", "r"}, y)},
			data:   map[string]arr{"x": fa([]int64{1, 2}, 1, 2)},
			consts: map[string]arr{"r": ia([]int64{2}, 2, 2)},
			want:   fa([]int64{2, 4}, 1, 2, 1, 2, 1, 2, 1, 2)},
		{name: "ScatterND rows",
			nodes:  []*onnxpb.NodeProto{node("ScatterND", []string{"x", "i", "u"}, y)},
			data:   map[string]arr{"x": fa([]int64{4, 2}, iota32(8)...), "u": fa([]int64{2, 2}, 10, 11, 12, 13)},
			consts: map[string]arr{"i": ia([]int64{2, 1}, 3, -4)},
			want:   fa([]int64{4, 2}, 12, 13, 2, 3, 4, 5, 10, 11)},
		{name: "ScatterND elements, indices as data",
			nodes: []*onnxpb.NodeProto{node("ScatterND", []string{"x", "i", "u"}, y)},
			data: map[string]arr{"x": fa([]int64{2, 2}, 0, 0, 0, 0), "u": fa([]int64{2}, 5, 6),
				"i": ia([]int64{2, 2}, 0, 1, 1, 0)},
			want: fa([]int64{2, 2}, 0, 5, 6, 0)},
		{name: "Softmax opset 11 flattens trailing axes", opset: 11,
			nodes: []*onnxpb.NodeProto{node("Softmax", in, y, attrI("axis", 1))},
			data:  map[string]arr{"x": fa([]int64{1, 2, 2}, 0, 0, 0, 0)},
			want:  fa([]int64{1, 2, 2}, 0.25, 0.25, 0.25, 0.25), tol: 1e-7},
		{name: "Softmax opset 13 axis 1",
			nodes: []*onnxpb.NodeProto{node("Softmax", in, y, attrI("axis", 1))},
			data:  map[string]arr{"x": fa([]int64{1, 2, 2}, 0, 0, 0, 0)},
			want:  fa([]int64{1, 2, 2}, 0.5, 0.5, 0.5, 0.5), tol: 1e-7},
		{name: "ReduceMean keepdims 0",
			nodes: []*onnxpb.NodeProto{node("ReduceMean", in, y, attrIs("axes", -1), attrI("keepdims", 0))},
			data:  map[string]arr{"x": fa([]int64{2, 2}, 1, 2, 3, 5)},
			want:  fa([]int64{2}, 1.5, 4)},
		{name: "ReduceSum axes input",
			nodes:  []*onnxpb.NodeProto{node("ReduceSum", []string{"x", "a"}, y)},
			data:   map[string]arr{"x": fa([]int64{2, 2}, 1, 2, 3, 5)},
			consts: map[string]arr{"a": ia([]int64{1}, 0)},
			want:   fa([]int64{1, 2}, 4, 7)},
		{name: "Gemm transA alpha beta",
			nodes: []*onnxpb.NodeProto{node("Gemm", []string{"a", "b", "c"}, y, attrI("transA", 1), attrF("alpha", 2), attrF("beta", 0.5))},
			data: map[string]arr{"a": fa([]int64{2, 1}, 1, 2), "b": fa([]int64{2, 2}, 1, 0, 0, 1),
				"c": fa([]int64{2}, 2, 4)},
			want: fa([]int64{1, 2}, 3, 6)},
		{name: "Gemm transB (Linear)",
			nodes: []*onnxpb.NodeProto{node("Gemm", []string{"a", "b", "c"}, y, attrI("transB", 1))},
			data: map[string]arr{"a": fa([]int64{1, 2}, 1, 2), "b": fa([]int64{3, 2}, 1, 0, 0, 1, 1, 1),
				"c": fa([]int64{3}, 1, 1, 1)},
			want: fa([]int64{1, 3}, 2, 3, 4)},
		{name: "LayerNormalization axis 1",
			nodes: []*onnxpb.NodeProto{node("LayerNormalization", []string{"x", "w", "b"}, y, attrI("axis", 1), attrF("epsilon", 0))},
			data: map[string]arr{"x": fa([]int64{1, 2, 2}, 1, 2, 3, 4),
				"w": fa([]int64{2, 2}, 1, 1, 1, 2), "b": fa([]int64{2, 2}, 0, 0, 0, 1)},
			want: fa([]int64{1, 2, 2}, -1.3416408, -0.4472136, 0.4472136, 1+2*1.3416408), tol: 1e-6},
		{name: "Pow and Sqrt",
			nodes:  []*onnxpb.NodeProto{node("Pow", []string{"x", "e"}, []string{"p"}), node("Sqrt", []string{"p"}, y)},
			data:   map[string]arr{"x": fa([]int64{2}, -3, 4)},
			consts: map[string]arr{"e": fa(nil, 2)},
			want:   fa([]int64{2}, 3, 4), tol: 1e-6},
		{name: "Erf Tanh Sigmoid Relu",
			nodes: []*onnxpb.NodeProto{node("Erf", in, []string{"a"}), node("Tanh", in, []string{"b"}),
				node("Sigmoid", in, []string{"c"}), node("Relu", in, []string{"d"}),
				node("Concat", []string{"a", "b", "c", "d"}, y, attrI("axis", 0))},
			data: map[string]arr{"x": fa([]int64{2}, -0.5, 1)},
			want: fa([]int64{8}, float32(math.Erf(-0.5)), float32(math.Erf(1)), float32(math.Tanh(-0.5)), float32(math.Tanh(1)),
				float32(1/(1+math.Exp(0.5))), float32(1/(1+math.Exp(-1))), 0, 1), tol: 1e-6},
		{name: "Identity of an input",
			nodes: []*onnxpb.NodeProto{node("Identity", in, y)},
			data:  map[string]arr{"x": fa([]int64{2}, 1, 2)},
			want:  fa([]int64{2}, 1, 2)},
		{name: "Dropout in eval mode is the identity", opset: 13,
			nodes:  []*onnxpb.NodeProto{node("Dropout", []string{"x", "r"}, y)},
			data:   map[string]arr{"x": fa([]int64{3}, 1, 2, 3)},
			consts: map[string]arr{"r": fa(nil, 0.5)},
			want:   fa([]int64{3}, 1, 2, 3)},
	}
}

func TestOps(t *testing.T) {
	for _, c := range opCases() {
		for _, asInputs := range []bool{true, false} {
			if !asInputs && c.data == nil {
				continue
			}
			mode := "constants"
			if asInputs {
				mode = "inputs"
			}
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				onTorch(t, func() error {
					got, err := runCase(c, asInputs)
					if err != nil {
						return err
					}
					if err := checkArr(got, c.want, c.tol); err != nil {
						t.Error(err)
					}
					return nil
				})
			})
		}
	}
}

// naiveConv is a direct 2-D convolution (NCHW, OIHW) with per-side pads.
func naiveConv(x []float32, xs []int64, w []float32, ws []int64, b []float32, stride, dil, padB, padE []int64, group int64) ([]float32, []int64) {
	n, ci, h, wd := xs[0], xs[1], xs[2], xs[3]
	co, cig, kh, kw := ws[0], ws[1], ws[2], ws[3]
	oh := (h+padB[0]+padE[0]-dil[0]*(kh-1)-1)/stride[0] + 1
	ow := (wd+padB[1]+padE[1]-dil[1]*(kw-1)-1)/stride[1] + 1
	out := make([]float32, n*co*oh*ow)
	cog := co / group
	_ = ci
	for bi := int64(0); bi < n; bi++ {
		for o := int64(0); o < co; o++ {
			g := o / cog
			for i := int64(0); i < oh; i++ {
				for j := int64(0); j < ow; j++ {
					s := float64(0)
					if b != nil {
						s = float64(b[o])
					}
					for c := int64(0); c < cig; c++ {
						for p := int64(0); p < kh; p++ {
							for q := int64(0); q < kw; q++ {
								r := i*stride[0] + p*dil[0] - padB[0]
								cc := j*stride[1] + q*dil[1] - padB[1]
								if r < 0 || r >= h || cc < 0 || cc >= wd {
									continue
								}
								s += float64(x[((bi*xs[1]+g*cig+c)*h+r)*wd+cc]) * float64(w[((o*cig+c)*kh+p)*kw+q])
							}
						}
					}
					out[((bi*co+o)*oh+i)*ow+j] = float32(s)
				}
			}
		}
	}
	return out, []int64{n, co, oh, ow}
}

func TestConv(t *testing.T) {
	xs, ws := []int64{2, 4, 7, 6}, []int64{6, 2, 3, 2}
	x := make([]float32, constfold.Prod(xs))
	w := make([]float32, constfold.Prod(ws))
	b := make([]float32, ws[0])
	for k := range x {
		x[k] = float32(math.Sin(float64(k)))
	}
	for k := range w {
		w[k] = float32(math.Cos(float64(3 * k)))
	}
	for k := range b {
		b[k] = float32(k) / 10
	}
	cases := []struct {
		name                    string
		attrs                   []*onnxpb.AttributeProto
		stride, dil, padB, padE []int64
	}{
		{"asymmetric pads, groups, stride, dilation",
			[]*onnxpb.AttributeProto{attrIs("pads", 0, 1, 2, 0), attrI("group", 2), attrIs("strides", 2, 1), attrIs("dilations", 1, 2)},
			[]int64{2, 1}, []int64{1, 2}, []int64{0, 1}, []int64{2, 0}},
		{"SAME_UPPER", []*onnxpb.AttributeProto{attrS("auto_pad", "SAME_UPPER"), attrI("group", 2), attrIs("strides", 2, 2)},
			[]int64{2, 2}, []int64{1, 1}, []int64{1, 0}, []int64{1, 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, shape := naiveConv(x, xs, w, ws, b, c.stride, c.dil, c.padB, c.padE, 2)
			oc := opCase{nodes: []*onnxpb.NodeProto{node("Conv", []string{"x", "w", "b"}, []string{"y"}, c.attrs...)},
				data: map[string]arr{"x": fa(xs, x...), "w": fa(ws, w...), "b": fa([]int64{6}, b...)},
				want: fa(shape, want...), tol: 1e-5}
			onTorch(t, func() error {
				got, err := runCase(oc, true)
				if err != nil {
					return err
				}
				if err := checkArr(got, oc.want, oc.tol); err != nil {
					t.Error(err)
				}
				return nil
			})
		})
	}
}

func TestUnsupportedOp(t *testing.T) {
	m := model(17, []*onnxpb.NodeProto{node("Foo", []string{"x"}, []string{"y"})},
		map[string]arr{"x": fa([]int64{1}, 1)}, nil, true)
	m.Graph.Node[0].Name = proto.String("/x/Foo")
	onTorch(t, func() error {
		_, err := Compile(m, engine.Options{})
		want := `compile: node "/x/Foo": op "Foo" is not supported`
		if err == nil || err.Error() != want {
			t.Errorf("error %v, want %q", err, want)
		}
		m.Graph.Node[0].OpType = proto.String("Relu")
		m.Graph.Node[0].Domain = proto.String("com.microsoft")
		_, err = Compile(m, engine.Options{})
		if err == nil || !strings.Contains(err.Error(), `domain "com.microsoft"`) {
			t.Errorf("error %v, want the domain named", err)
		}
		return nil
	})
}

func TestRunErrors(t *testing.T) {
	m := model(17, []*onnxpb.NodeProto{node("Reshape", []string{"x", "s"}, []string{"y"})},
		map[string]arr{"x": fa([]int64{2, 3}, iota32(6)...)}, map[string]arr{"s": ia([]int64{1}, 4)}, true)
	onTorch(t, func() error {
		p, err := Compile(m, engine.Options{})
		if err != nil {
			return err
		}
		defer p.Close()
		if _, err := p.run(nil, false); err == nil || !strings.Contains(err.Error(), `missing input "x"`) {
			t.Errorf("no input: %v", err)
		}
		x, err := tensorFromFloats(iota32(6), []int64{2, 3})
		if err != nil {
			return err
		}
		defer x.Drop()
		_, err = p.run(map[string]*ts.Tensor{"x": x}, false)
		if err == nil || !strings.Contains(err.Error(), `node "/Reshape" (Reshape): cannot reshape [2 3]`) {
			t.Errorf("bad reshape: %v", err)
		}
		x2, err := tensorFromFloats(iota32(6), []int64{3, 2})
		if err != nil {
			return err
		}
		defer x2.Drop()
		if _, err = p.run(map[string]*ts.Tensor{"x": x2}, false); err == nil || !strings.Contains(err.Error(), "graph wants [2 3]") {
			t.Errorf("wrong input shape: %v", err)
		}
		return nil
	})
}

// TestDropoutTrain: train-mode Dropout drops about ratio of the values, scales the
// rest by 1/(1-ratio), and repeats under the same seed.
func TestDropoutTrain(t *testing.T) {
	const n = 20000
	ones := make([]float32, n)
	for k := range ones {
		ones[k] = 1
	}
	m := model(13, []*onnxpb.NodeProto{node("Dropout", []string{"x", "r"}, []string{"y"})},
		map[string]arr{"x": fa([]int64{n}, ones...)}, map[string]arr{"r": fa(nil, 0.25)}, true)
	onTorch(t, func() error {
		p, err := Compile(m, engine.Options{})
		if err != nil {
			return err
		}
		defer p.Close()
		x, err := tensorFromFloats(ones, []int64{n})
		if err != nil {
			return err
		}
		defer x.Drop()
		draw := func() ([]float32, error) {
			outs, err := p.run(map[string]*ts.Tensor{"x": x}, true)
			if err != nil {
				return nil, err
			}
			defer outs["y"].Drop()
			return copyFloats(outs["y"])
		}
		if err := SetSeed(42); err != nil {
			return err
		}
		a, err := draw()
		if err != nil {
			return err
		}
		zeros := 0
		for _, v := range a {
			switch {
			case v == 0:
				zeros++
			case math.Abs(float64(v)-1/0.75) > 1e-6:
				t.Fatalf("kept value %g, want %g", v, 1/0.75)
			}
		}
		if frac := float64(zeros) / n; math.Abs(frac-0.25) > 0.02 {
			t.Errorf("dropped %.3f, want 0.25", frac)
		}
		if err := SetSeed(42); err != nil {
			return err
		}
		b, err := draw()
		if err != nil {
			return err
		}
		if fmt.Sprint(a[:50]) != fmt.Sprint(b[:50]) {
			t.Error("same seed, different dropout")
		}
		return nil
	})
}

// TestFusionGuards: a GELU chain whose intermediate value is read elsewhere, or a
// MatMul+Add whose bias is not a 1-D initializer, runs node by node, and correctly.
func TestFusionGuards(t *testing.T) {
	x := fa([]int64{2, 3}, -1, -0.5, 0, 0.5, 1, 2)
	consts := map[string]arr{"s2": fa(nil, float32(math.Sqrt2)), "one": fa(nil, 1), "half": fa(nil, 0.5)}
	gelu := []*onnxpb.NodeProto{
		node("Div", []string{"x", "s2"}, []string{"d"}), node("Erf", []string{"d"}, []string{"e"}),
		node("Add", []string{"e", "one"}, []string{"a"}), node("Mul", []string{"x", "a"}, []string{"m"}),
		node("Mul", []string{"m", "half"}, []string{"g"}),
	}
	want := make([]float32, 6)
	for k, v := range x.f {
		want[k] = float32(0.5*float64(v)*(1+math.Erf(float64(v)/math.Sqrt2))) + float32(math.Erf(float64(v)/math.Sqrt2))
	}
	// y = gelu(x) + erf(x/√2): the Erf output has two readers.
	nodes := append(append([]*onnxpb.NodeProto{}, gelu...), node("Add", []string{"g", "e"}, []string{"y"}))
	m := model(17, nodes, map[string]arr{"x": x}, consts, true)
	if f, _ := findFusions(m.GetGraph()); len(f) != 0 {
		t.Errorf("fused a chain with a shared intermediate")
	}
	// Plain GELU: fused.
	m2 := model(17, append(append([]*onnxpb.NodeProto{}, gelu...), node("Identity", []string{"g"}, []string{"y"})), map[string]arr{"x": x}, consts, true)
	if f, _ := findFusions(m2.GetGraph()); len(f) != 1 {
		t.Errorf("%d fusions of a plain GELU chain, want 1", len(f))
	}
	for _, c := range []opCase{
		{nodes: nodes, data: map[string]arr{"x": x}, consts: consts, want: fa([]int64{2, 3}, want...), tol: 1e-6},
		{nodes: append(append([]*onnxpb.NodeProto{}, gelu...), node("Identity", []string{"g"}, []string{"y"})),
			data: map[string]arr{"x": x}, consts: consts, want: fa([]int64{2, 3}, func() []float32 {
				w := make([]float32, 6)
				for k, v := range x.f {
					w[k] = float32(0.5 * float64(v) * (1 + math.Erf(float64(v)/math.Sqrt2)))
				}
				return w
			}()...), tol: 1e-6},
	} {
		onTorch(t, func() error {
			got, err := runCase(c, true)
			if err != nil {
				return err
			}
			if err := checkArr(got, c.want, c.tol); err != nil {
				t.Error(err)
			}
			return nil
		})
	}
}

func TestWorker(t *testing.T) {
	w := NewWorker()
	n := 0
	onThread := func() error {
		if NumThreads() < 1 {
			return fmt.Errorf("NumThreads = %d", NumThreads())
		}
		n++
		return nil
	}
	if err := w.Do(onThread); err != nil || n != 1 {
		t.Fatalf("Do: %v, n %d", err, n)
	}
	err := w.Do(func() error { var m map[string]int; m["x"] = 1; return nil })
	if err == nil || !strings.Contains(err.Error(), "panic on the torch thread") {
		t.Errorf("panic: %v", err)
	}
	if err := w.Do(onThread); err != nil {
		t.Errorf("after a panic: %v", err)
	}
	w.Close()
	w.Close()
	if err := w.Do(onThread); err != ErrWorkerClosed {
		t.Errorf("after Close: %v", err)
	}
}
