package constfold

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

const python = "/usr/bin/python3"

// jt is a tensor as the numpy oracle reads and writes it.
type jt struct {
	DType string    `json:"dtype"` // float32, int64, bool
	Shape []int64   `json:"shape"`
	Data  []float64 `json:"data"`
}

func toJSON(t *Tensor) jt {
	d := "int64"
	switch {
	case t.DType == Bool:
		d = "bool"
	case t.IsFloat():
		d = "float32"
	}
	return jt{DType: d, Shape: append([]int64{}, t.Shape...), Data: t.Floats()}
}

func fromJSON(j jt) *Tensor {
	dt := map[string]int32{"float32": Float, "int64": Int64, "bool": Bool}[j.DType]
	t := Zeros(dt, j.Shape)
	for k, v := range j.Data {
		if t.IsFloat() {
			t.F[k] = v
		} else {
			t.I[k] = int64(v)
		}
	}
	return t
}

func f32(shape []int64, v ...float64) *Tensor {
	return &Tensor{DType: Float, Shape: shape, F: v}
}
func i64(shape []int64, v ...int64) *Tensor { return Ints64(shape, v) }
func bools(shape []int64, v ...int64) *Tensor {
	return &Tensor{DType: Bool, Shape: shape, I: v}
}

// npCase computes got in Go and the same with numpy: expr over the inputs a, b, c.
type npCase struct {
	name string
	in   []*Tensor
	expr string
	got  func(in []*Tensor) (*Tensor, error)
}

const oracle = `
import json, math, sys
import numpy as np
erf = np.vectorize(math.erf, otypes=[np.float64])
out = []
for c in json.load(sys.stdin):
    env = {"np": np, "erf": erf}
    for name, t in zip("abc", c["in"]):
        env[name] = np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"])
    r = np.asarray(eval(c["expr"], env))
    kind = "bool" if r.dtype == bool else ("float32" if r.dtype.kind == "f" else "int64")
    out.append({"dtype": kind, "shape": list(r.shape), "data": [float(x) for x in r.reshape(-1)]})
json.dump(out, sys.stdout)
`

func TestKernelsAgainstNumpy(t *testing.T) {
	if _, err := exec.LookPath(python); err != nil {
		t.Skip("no python3 for the numpy oracle")
	}
	bin := func(op string) func([]*Tensor) (*Tensor, error) {
		return func(in []*Tensor) (*Tensor, error) { return BinaryOp(op, in[0], in[1]) }
	}
	un := func(op string) func([]*Tensor) (*Tensor, error) {
		return func(in []*Tensor) (*Tensor, error) {
			out, ok := Unary(op, in[0])
			if !ok {
				t.Fatalf("Unary %s: not computed", op)
			}
			return out, nil
		}
	}
	s23, s3, s21, s13 := []int64{2, 3}, []int64{3}, []int64{2, 1}, []int64{1, 3}
	fa := f32(s23, 1.5, -2.25, 3, 0.1, 7, -0.3)
	fb := f32(s13, 0.7, 2, -4)
	ia := i64(s23, -7, 7, -7, 8, 0, 5)
	ib := i64(s3, 2, 2, -2)
	cases := []npCase{
		{"add-int", []*Tensor{ia, ib}, "a+b", bin("Add")},
		{"sub-float", []*Tensor{f32(s21, 0.1, 0.2), fb}, "a-b", bin("Sub")},
		{"mul-scalar", []*Tensor{i64(nil, 3), ib}, "a*b", bin("Mul")},
		{"div-int-truncates", []*Tensor{ia, ib}, "np.fix(a/b).astype(np.int64)", bin("Div")},
		{"div-float", []*Tensor{fa, fb}, "a/b", bin("Div")},
		{"pow-float", []*Tensor{f32(s3, 1.5, 2, 3), f32(nil, 2)}, "a**b", bin("Pow")},
		{"equal", []*Tensor{ia, ib}, "a==b", bin("Equal")},
		{"less-float", []*Tensor{fa, fb}, "a<b", bin("Less")},
		{"greater", []*Tensor{ia, i64(nil, 0)}, "a>b", bin("Greater")},
		{"and", []*Tensor{bools(s23, 1, 0, 1, 1, 0, 0), bools(s3, 1, 1, 0)}, "a&b", bin("And")},
		{"or", []*Tensor{bools(s23, 1, 0, 1, 1, 0, 0), bools(s3, 1, 1, 0)}, "a|b", bin("Or")},
		{"max", []*Tensor{fa, fb}, "np.maximum(a,b)", bin("Max")},
		{"min-int", []*Tensor{ia, ib}, "np.minimum(a,b)", bin("Min")},
		{"sqrt", []*Tensor{f32(s3, 2, 9, 0.5)}, "np.sqrt(a)", un("Sqrt")},
		{"exp", []*Tensor{fa}, "np.exp(a)", un("Exp")},
		{"erf", []*Tensor{fa}, "erf(a).astype(np.float32)", un("Erf")},
		{"relu-int", []*Tensor{ia}, "np.maximum(a,0)", un("Relu")},
		{"abs-int", []*Tensor{ia}, "np.abs(a)", un("Abs")},
		{"floor", []*Tensor{fa}, "np.floor(a)", un("Floor")},
		{"not", []*Tensor{bools(s3, 1, 0, 1)}, "~a", un("Not")},
		{"where", []*Tensor{bools(s21, 1, 0), fa, fb}, "np.where(a,b,c)",
			func(in []*Tensor) (*Tensor, error) { return Where(in[0], in[1], in[2]) }},
		{"cast-float-int", []*Tensor{fa}, "a.astype(np.int64)",
			func(in []*Tensor) (*Tensor, error) { return Cast(in[0], int32(onnxpb.TensorProto_INT32)) }},
		{"cast-int-bool", []*Tensor{ia}, "a.astype(bool)",
			func(in []*Tensor) (*Tensor, error) { return Cast(in[0], Bool) }},
		{"cast-int-float", []*Tensor{ia}, "a.astype(np.float32)",
			func(in []*Tensor) (*Tensor, error) { return Cast(in[0], Float) }},
		{"gather", []*Tensor{fa, i64([]int64{2, 2}, 2, -3, 0, 1)}, "np.take(a,b,axis=1)",
			func(in []*Tensor) (*Tensor, error) { return Gather(in[0], in[1], 1) }},
		{"gather-scalar", []*Tensor{ia, i64(nil, -1)}, "np.take(a,b,axis=0)",
			func(in []*Tensor) (*Tensor, error) { return Gather(in[0], in[1], 0) }},
		{"concat", []*Tensor{fa, f32(s21, 9, 8)}, "np.concatenate([a,b],axis=1)",
			func(in []*Tensor) (*Tensor, error) { return Concat(in, 1) }},
		{"concat-mixed", []*Tensor{i64(s3, 1, 2, 3), f32([]int64{1}, 4.5)}, "np.concatenate([a,b.astype(np.int64)])",
			func(in []*Tensor) (*Tensor, error) { return Concat(in, 0) }},
		{"transpose", []*Tensor{i64([]int64{2, 3, 2}, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)}, "np.transpose(a,(2,0,1))",
			func(in []*Tensor) (*Tensor, error) { return Transpose(in[0], []int{2, 0, 1}) }},
		{"slice", []*Tensor{i64([]int64{5, 4}, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)},
			"a[1:-1:2, 100:-100:-1]", func(in []*Tensor) (*Tensor, error) {
				f0, s0, c0 := SliceRange(1, -1, 2, 5)
				f1, s1, c1 := SliceRange(100, -100, -1, 4)
				return Slice(in[0], []int64{f0, f1}, []int64{s0, s1}, []int64{c0, c1})
			}},
		{"slice-empty", []*Tensor{fa}, "a[:, 3:1]", func(in []*Tensor) (*Tensor, error) {
			f1, s1, c1 := SliceRange(3, 1, 1, 3)
			return Slice(in[0], []int64{0, f1}, []int64{1, s1}, []int64{2, c1})
		}},
		{"range-int", []*Tensor{i64(nil, 10), i64(nil, -3), i64(nil, -4)}, "np.arange(a,b,c)",
			func(in []*Tensor) (*Tensor, error) { return Range(in[0], in[1], in[2]) }},
		{"range-float", []*Tensor{f32(nil, 0.5), f32(nil, 3), f32(nil, 0.5)}, "np.arange(a,b,c,dtype=np.float32)",
			func(in []*Tensor) (*Tensor, error) { return Range(in[0], in[1], in[2]) }},
		{"expand", []*Tensor{f32(s21, 1, 2), i64(s3, 2, 1, 3)}, "np.broadcast_to(a, np.broadcast_shapes(a.shape, tuple(b)))",
			func(in []*Tensor) (*Tensor, error) { return Expand(in[0], in[1].I) }},
		{"reshape", []*Tensor{ia}, "a.reshape(3,1,2)",
			func(in []*Tensor) (*Tensor, error) { return Reshape(in[0], []int64{3, 1, 2}) }},
		{"fill", []*Tensor{i64([]int64{1}, 7)}, "np.full((2,3),7)",
			func(in []*Tensor) (*Tensor, error) { return Fill(in[0], []int64{2, 3}) }},
	}
	type req struct {
		In   []jt   `json:"in"`
		Expr string `json:"expr"`
	}
	var reqs []req
	for _, c := range cases {
		r := req{Expr: c.expr}
		for _, in := range c.in {
			r.In = append(r.In, toJSON(in))
		}
		reqs = append(reqs, r)
	}
	b, _ := json.Marshal(reqs)
	cmd := exec.Command(python, "-c", oracle)
	cmd.Stdin = strings.NewReader(string(b))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("numpy oracle: %v", err)
	}
	var want []jt
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	for k, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := snapshot(c.in)
			got, err := c.got(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(snapshot(c.in), before) {
				t.Error("the kernel changed its inputs")
			}
			compare(t, got, fromJSON(want[k]))
		})
	}
}

func snapshot(in []*Tensor) []float64 {
	var s []float64
	for _, t := range in {
		s = append(s, t.Floats()...)
	}
	return s
}

func compare(t *testing.T, got, want *Tensor) {
	t.Helper()
	if !slices.Equal(got.Shape, want.Shape) && !(len(got.Shape) == 0 && len(want.Shape) == 0) {
		t.Fatalf("shape %v, want %v", got.Shape, want.Shape)
	}
	if got.IsFloat() != want.IsFloat() || (got.DType == Bool) != (want.DType == Bool) {
		t.Fatalf("type %s, want %s", TypeName(got.DType), TypeName(want.DType))
	}
	g, w := got.Floats(), want.Floats()
	if len(g) != len(w) {
		t.Fatalf("%d values, want %d", len(g), len(w))
	}
	for k := range g {
		if math.Abs(g[k]-w[k]) > 1e-6*math.Max(1, math.Abs(w[k])) {
			t.Fatalf("value %d: %v, want %v (got %v, want %v)", k, g[k], w[k], g, w)
		}
	}
}

// TestFromProtoAgainstONNX decodes tensors that onnx's numpy_helper (raw data) and
// helper.make_tensor (typed data) wrote, for every element type FromProto reads.
func TestFromProtoAgainstONNX(t *testing.T) {
	if out, err := exec.Command(python, "-c", "import onnx").CombinedOutput(); err != nil {
		t.Skipf("no python3 with onnx: %v %s", err, out)
	}
	const script = `
import base64, json
import numpy as np
from onnx import helper, numpy_helper, TensorProto
vals = [[-3, 0, 5, 127, -128, 9], [1, 0, 1, 1, 0, 0]]
out = []
for dt in ["float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64", "bool"]:
    v = np.array(vals[1] if dt == "bool" else vals[0]).astype(dt).reshape(2, 3)
    if dt in ("float32", "float64"):
        v = v * np.array(0.37, dtype=dt)
    raw = numpy_helper.from_array(v, "t")
    typed = helper.make_tensor("t", helper.np_dtype_to_tensor_dtype(v.dtype) if hasattr(helper, "np_dtype_to_tensor_dtype") else helper.mapping.NP_TYPE_TO_TENSOR_TYPE[v.dtype], [2, 3], v.reshape(-1).tolist())
    for p in (raw, typed):
        out.append({"proto": base64.b64encode(p.SerializeToString()).decode(), "dtype": dt,
                    "data": [float(x) for x in v.reshape(-1)]})
print(json.dumps(out))
`
	out, err := exec.Command(python, "-c", script).Output()
	if err != nil {
		t.Fatalf("onnx oracle: %v", err)
	}
	var cases []struct {
		Proto, DType string
		Data         []float64
	}
	if err := json.Unmarshal(out, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		b, _ := base64.StdEncoding.DecodeString(c.Proto)
		var p onnxpb.TensorProto
		if err := proto.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		got, err := FromProto(&p)
		if err != nil {
			t.Fatalf("%s (raw %v): %v", c.DType, p.RawData != nil, err)
		}
		kind := "int64"
		switch c.DType {
		case "float32", "float64":
			kind = "float32"
		case "bool":
			kind = "bool"
		}
		t.Run(c.DType, func(t *testing.T) { compare(t, got, fromJSON(jt{DType: kind, Shape: []int64{2, 3}, Data: c.Data})) })
	}
}

func TestBadInputsAreErrors(t *testing.T) {
	s23 := []int64{2, 3}
	fa := f32(s23, 1, 2, 3, 4, 5, 6)
	ia := i64(s23, 1, 2, 3, 4, 5, 6)
	short := []float32{1, 2}
	for name, err := range map[string]error{
		"broadcast":     second(BinaryOp("Add", fa, f32([]int64{2}, 1, 2))),
		"and of floats": second(BinaryOp("And", fa, fa)),
		"int div by 0":  second(BinaryOp("Div", ia, i64(nil, 0))),
		"unknown op":    second(BinaryOp("Hypot", fa, fa)),
		"gather range":  second(Gather(fa, i64(nil, 3), 1)),
		"gather axis":   second(Gather(fa, i64(nil, 0), 2)),
		"gather float":  second(Gather(fa, f32(nil, 0), 0)),
		"concat shapes": second(Concat([]*Tensor{fa, f32([]int64{1, 2}, 1, 2)}, 1)),
		"concat ranks":  second(Concat([]*Tensor{fa, f32([]int64{3}, 1, 2, 3)}, 0)),
		"concat none":   second(Concat(nil, 0)),
		"reshape":       second(Reshape(fa, []int64{4})),
		"reshape neg":   second(Reshape(fa, []int64{-2, -3})),
		"transpose":     second(Transpose(fa, []int{0, 0})),
		"slice bounds":  second(Slice(fa, []int64{0, 2}, []int64{1, 1}, []int64{2, 2})),
		"range delta 0": second(Range(i64(nil, 0), i64(nil, 3), i64(nil, 0))),
		"range huge":    second(Range(f32(nil, 0), f32(nil, 1e12), f32(nil, 1e-3))),
		"fill shape":    second(Fill(f32(nil, 1), []int64{2, -1})),
		"fill value":    second(Fill(fa, []int64{2})),
		"where types":   second(Where(bools(nil, 1), fa, ia)),
		"cast string":   second(Cast(fa, int32(onnxpb.TensorProto_STRING))),
		"proto length":  second(FromProto(&onnxpb.TensorProto{DataType: proto.Int32(Float), Dims: s23, FloatData: short})),
		"proto type":    second(FromProto(&onnxpb.TensorProto{DataType: proto.Int32(int32(onnxpb.TensorProto_STRING))})),
		"proto dims":    second(FromProto(&onnxpb.TensorProto{DataType: proto.Int32(Float), Dims: []int64{-1}})),
		"proto external": second(FromProto(&onnxpb.TensorProto{DataType: proto.Int32(Float),
			DataLocation: onnxpb.TensorProto_EXTERNAL.Enum()})),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, ok := Unary("Sin", fa); ok {
		t.Error("Unary computed an operator it does not know")
	}
}

func second[T any](_ T, err error) error { return err }
