package export

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// tensor is a constant value: its element type, shape and little-endian bytes.
type tensor struct {
	dtype int32
	dims  []int64
	raw   []byte
	// owned is set when raw was computed here (not a view of a model's tensor).
	owned bool
}

func leaf(t *onnxpb.TensorProto) (*tensor, error) {
	if err := onnxio.CheckTensor(t); err != nil {
		return nil, err
	}
	raw, err := onnxio.Bytes(t)
	if err != nil {
		return nil, err
	}
	return &tensor{dtype: t.GetDataType(), dims: slices.Clone(t.Dims), raw: raw}, nil
}

func (t *tensor) equal(u *tensor) bool {
	return t.dtype == u.dtype && slices.Equal(t.dims, u.dims) && bytes.Equal(t.raw, u.raw)
}

func (t *tensor) floats() ([]float32, error) {
	if t.dtype != onnxio.Float {
		return nil, fmt.Errorf("type %s, want FLOAT", onnxpb.TensorProto_DataType(t.dtype))
	}
	out := make([]float32, len(t.raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.raw[4*i:]))
	}
	return out, nil
}

func floatTensor(dims []int64, v []float32) *tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return &tensor{dtype: onnxio.Float, dims: slices.Clone(dims), raw: b, owned: true}
}

// proto makes an initializer named name holding t (its bytes copied unless t owns them).
func (t *tensor) proto(name string) *onnxpb.TensorProto {
	raw := t.raw
	if !t.owned {
		raw = slices.Clone(raw)
	}
	return &onnxpb.TensorProto{Name: &name, DataType: &t.dtype, Dims: slices.Clone(t.dims), RawData: raw}
}

// errNotConst marks a value computed from the graph's inputs.
var errNotConst = errors.New("not a constant expression")

// evaluator computes the constant values of an injected model: the expressions inject
// puts where a layer reads its weight or a vector (W + ScatterND(…), Concat of pieces,
// an un-shared copy, an Identity alias). Values are looked up in the injected model
// first, then in the base (for nodes the injection removed).
type evaluator struct {
	gs   []*surgery.Graph
	memo map[string]*tensor
}

func newEvaluator(gs ...*surgery.Graph) *evaluator {
	return &evaluator{gs: gs, memo: map[string]*tensor{}}
}

func (e *evaluator) value(v string) (*tensor, error) {
	if t, ok := e.memo[v]; ok {
		return t, nil
	}
	t, err := e.compute(v, 0)
	if err != nil {
		return nil, err
	}
	e.memo[v] = t
	return t, nil
}

func (e *evaluator) compute(v string, depth int) (*tensor, error) {
	if depth > 256 {
		return nil, fmt.Errorf("%s: expression too deep", v)
	}
	for _, g := range e.gs {
		if t := g.Initializer(v); t != nil {
			return leaf(t)
		}
		if n := g.Producer(v); n != nil {
			return e.op(n, depth)
		}
	}
	return nil, fmt.Errorf("%s: %w", v, errNotConst)
}

func (e *evaluator) op(n *onnxpb.NodeProto, depth int) (*tensor, error) {
	in := func(i int) (*tensor, error) {
		if i >= len(n.Input) || n.Input[i] == "" {
			return nil, fmt.Errorf("node %s (%s): missing input %d", n.GetName(), n.GetOpType(), i)
		}
		if t, ok := e.memo[n.Input[i]]; ok {
			return t, nil
		}
		t, err := e.compute(n.Input[i], depth+1)
		if err == nil {
			e.memo[n.Input[i]] = t
		}
		return t, err
	}
	fail := func(format string, a ...any) error {
		return fmt.Errorf("node %s (%s): "+format, append([]any{n.GetName(), n.GetOpType()}, a...)...)
	}
	switch n.GetOpType() {
	case "Identity":
		return in(0)
	case "Constant":
		if a := surgery.Attr(n, "value"); a != nil && a.T != nil {
			return leaf(a.T)
		}
		return nil, fail("only the tensor form of Constant is supported: %w", errNotConst)
	case "Add":
		a, err := in(0)
		if err != nil {
			return nil, err
		}
		b, err := in(1)
		if err != nil {
			return nil, err
		}
		if a.dtype != onnxio.Float || b.dtype != onnxio.Float || !slices.Equal(a.dims, b.dims) {
			return nil, fail("only float tensors of one shape are added here (%v, %v): %w", a.dims, b.dims, errNotConst)
		}
		x, _ := a.floats()
		y, _ := b.floats()
		for i := range x {
			x[i] += y[i]
		}
		return floatTensor(a.dims, x), nil
	case "ConstantOfShape":
		s, err := in(0)
		if err != nil {
			return nil, err
		}
		if s.dtype != onnxio.Int64 || len(s.dims) != 1 {
			return nil, fail("shape is not a 1-D int64 tensor")
		}
		dims := make([]int64, s.dims[0])
		for i := range dims {
			dims[i] = int64(binary.LittleEndian.Uint64(s.raw[8*i:]))
		}
		val := &tensor{dtype: onnxio.Float, raw: make([]byte, 4)}
		if a := surgery.Attr(n, "value"); a != nil && a.T != nil {
			if val, err = leaf(a.T); err != nil {
				return nil, err
			}
		}
		es := onnxio.ElemSize(val.dtype)
		count := onnxio.NumElements(dims)
		if es == 0 || len(val.raw) != es || count < 0 {
			return nil, fail("bad value or shape")
		}
		return &tensor{dtype: val.dtype, dims: dims, raw: bytes.Repeat(val.raw, int(count)), owned: true}, nil
	case "ScatterND":
		if r := surgery.Attr(n, "reduction"); r != nil && string(r.GetS()) != "none" {
			return nil, fail("reduction %q is not supported: %w", r.GetS(), errNotConst)
		}
		data, err := in(0)
		if err != nil {
			return nil, err
		}
		idx, err := in(1)
		if err != nil {
			return nil, err
		}
		upd, err := in(2)
		if err != nil {
			return nil, err
		}
		rank := int64(len(data.dims))
		es := int64(onnxio.ElemSize(data.dtype))
		if idx.dtype != onnxio.Int64 || len(idx.dims) != 2 || idx.dims[1] != rank || upd.dtype != data.dtype ||
			len(upd.dims) != 1 || upd.dims[0] != idx.dims[0] || es == 0 {
			return nil, fail("only element-wise scatters (indices [n, rank]) are supported: %w", errNotConst)
		}
		out := slices.Clone(data.raw)
		for j := int64(0); j < idx.dims[0]; j++ {
			var f int64
			for d := int64(0); d < rank; d++ {
				k := int64(binary.LittleEndian.Uint64(idx.raw[8*(j*rank+d):]))
				if k < 0 {
					k += data.dims[d]
				}
				if k < 0 || k >= data.dims[d] {
					return nil, fail("index %d out of range for dimension %d of %v", k, d, data.dims)
				}
				f = f*data.dims[d] + k
			}
			copy(out[f*es:(f+1)*es], upd.raw[j*es:(j+1)*es])
		}
		return &tensor{dtype: data.dtype, dims: slices.Clone(data.dims), raw: out, owned: true}, nil
	case "Concat":
		var parts []*tensor
		for i := range n.Input {
			t, err := in(i)
			if err != nil {
				return nil, err
			}
			parts = append(parts, t)
		}
		if len(parts) == 0 {
			return nil, fail("no inputs")
		}
		rank := int64(len(parts[0].dims))
		axis := surgery.AttrInt(n, "axis", 0)
		if axis < 0 {
			axis += rank
		}
		if axis < 0 || axis >= rank {
			return nil, fail("axis %d for rank %d", axis, rank)
		}
		es := int64(onnxio.ElemSize(parts[0].dtype))
		dims := slices.Clone(parts[0].dims)
		dims[axis] = 0
		outer := onnxio.NumElements(dims[:axis])
		inner := onnxio.NumElements(dims[axis+1:]) * es
		for _, p := range parts {
			if p.dtype != parts[0].dtype || int64(len(p.dims)) != rank {
				return nil, fail("inputs of different types or ranks")
			}
			for d := range p.dims {
				if int64(d) != axis && p.dims[d] != dims[d] {
					return nil, fail("inputs of shapes %v and %v", parts[0].dims, p.dims)
				}
			}
			dims[axis] += p.dims[axis]
		}
		out := make([]byte, 0, onnxio.NumElements(dims)*es)
		for o := int64(0); o < outer; o++ {
			for _, p := range parts {
				w := p.dims[axis] * inner
				out = append(out, p.raw[o*w:(o+1)*w]...)
			}
		}
		return &tensor{dtype: parts[0].dtype, dims: dims, raw: out, owned: true}, nil
	}
	return nil, fail("%w", errNotConst)
}
