package torch

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// The executor: an ONNX graph compiled once into an ordered list of steps that run on
// libtorch tensors through gotch, with autograd.
//
// Values are either libtorch tensors (activations, weights) or small tensors kept in Go
// memory ("host" values: shapes, indices, scalar constants), so the shape arithmetic
// exporters write (Shape → Gather → Unsqueeze → Concat → Reshape) costs no libtorch
// call. Nodes whose inputs are all constants are evaluated once, at compile time;
// float initializers never are (their values can change), so a node that reads a
// weight always runs. Every intermediate tensor is dropped right after its last
// consumer ran; autograd keeps what backward needs by reference count.
//
// Threading: libtorch's grad mode and gotch's error slot are per OS thread, so every
// call into a Program (Compile included) must run on one goroutine locked to its OS
// thread; Worker provides one.

// Program is a compiled graph with its weights as libtorch tensors.
type Program struct {
	opset     int64
	names     []string // value id -> name
	ids       map[string]int
	static    []value // compile-time values (initializers, constants, folded nodes)
	isStatic  []bool
	isParam   []bool // a float initializer (or an Identity alias of one)
	isInput   []bool
	steps     []*step
	inputs    []engine.IO
	inIDs     []int
	outputs   []engine.IO
	outIDs    []int
	params    map[string]*param
	order     []string // float initializers in graph order
	trainable []string
	hostCache map[*constfold.Tensor]*ts.Tensor // libtorch copies of static host values
	gradSq    map[string]*ts.Tensor            // AddGradSquares' running sums (without SquareGrads)
	squares   *gradSquares                     // Options.SquareGrads: the hooks and their running sums
	precision engine.Precision
	closed    bool
}

type param struct {
	name      string
	t         *ts.Tensor
	shape     []int64
	trainable bool
}

type step struct {
	name, op string
	in, out  []int // value ids; -1 for an absent optional input
	k        kernel
	free     []int // dynamic values whose last use is this step
}

// value is a tensor in libtorch (t) or in Go memory (h); neither for an absent input.
type value struct {
	t      *ts.Tensor
	h      *constfold.Tensor
	static bool
}

func (v value) none() bool { return v.t == nil && v.h == nil }

// kernel runs one node.
type kernel func(r *runCtx, in []value) ([]value, error)

// runCtx is what a kernel sees of the run it is part of.
type runCtx struct {
	p     *Program
	train bool
	temps []*ts.Tensor
}

// T returns v as a libtorch tensor. Host values are converted; static ones once per
// Program, dynamic ones per use (dropped after the step).
func (r *runCtx) T(v value) (*ts.Tensor, error) {
	if v.t != nil {
		return v.t, nil
	}
	if v.h == nil {
		return nil, errors.New("missing input")
	}
	if v.static {
		if t, ok := r.p.hostCache[v.h]; ok {
			return t, nil
		}
	}
	t, err := tensorFromHost(v.h)
	if err != nil {
		return nil, err
	}
	if v.static {
		r.p.hostCache[v.h] = t
	} else {
		r.temps = append(r.temps, t)
	}
	return t, nil
}

// H returns v in Go memory (copying a libtorch tensor out if needed).
func (r *runCtx) H(v value) (*constfold.Tensor, error) {
	if v.h != nil {
		return v.h, nil
	}
	if v.t == nil {
		return nil, errors.New("missing input")
	}
	return hostFromTensor(v.t)
}

// Shape returns v's shape.
func (r *runCtx) Shape(v value) ([]int64, error) {
	if v.h != nil {
		return v.h.Shape, nil
	}
	if v.t == nil {
		return nil, errors.New("missing input")
	}
	return sizeOf(v.t)
}

func (r *runCtx) dropTemps() {
	for _, t := range r.temps {
		t.Drop()
	}
	r.temps = r.temps[:0]
}

// Compile turns m's graph into a Program. It fails on an op outside the supported
// list, naming the node and the op. Call it on the torch thread (see Worker).
func Compile(m *onnxpb.ModelProto, opt engine.Options) (p *Program, err error) {
	g := m.GetGraph()
	if g == nil {
		return nil, errors.New("compile: model has no graph")
	}
	p = &Program{
		opset:     onnxio.Opset(m),
		ids:       map[string]int{},
		params:    map[string]*param{},
		hostCache: map[*constfold.Tensor]*ts.Tensor{},
		precision: opt.Precision,
	}
	if p.opset == 0 {
		p.opset = 17
	}
	prog := p
	defer func() {
		if err != nil {
			prog.Close() // whatever was made before the error
			p = nil
		}
	}()
	want := map[string]bool{}
	for _, n := range opt.Trainable {
		want[n] = true
	}

	// Initializers.
	for _, init := range g.GetInitializer() {
		name := init.GetName()
		if _, dup := p.ids[name]; dup {
			return nil, fmt.Errorf("compile: initializer %q defined twice", name)
		}
		id := p.newValue(name)
		if init.GetDataType() == onnxio.Float {
			t, err := floatInitializer(init)
			if err != nil {
				return nil, fmt.Errorf("compile: initializer %q: %w", name, err)
			}
			pr := &param{name: name, t: t, shape: append([]int64{}, init.GetDims()...)}
			p.params[name] = pr
			p.order = append(p.order, name)
			if want[name] {
				if err := t.RequiresGrad_(true); err != nil {
					return nil, fmt.Errorf("compile: initializer %q: requires_grad: %w", name, torchErr(err))
				}
				pr.trainable = true
				p.trainable = append(p.trainable, name)
			}
			p.setStatic(id, value{t: t, static: true})
			p.isParam[id] = true
			continue
		}
		h, err := constfold.FromProto(init)
		if err != nil {
			return nil, fmt.Errorf("compile: initializer: %w", err)
		}
		p.setStatic(id, value{h: h, static: true})
	}
	for _, n := range opt.Trainable {
		if _, ok := p.params[n]; !ok {
			return nil, fmt.Errorf("compile: trainable %q is not a float initializer of the graph", n)
		}
	}
	if opt.SquareGrads {
		if err := p.hookGradSquares(); err != nil {
			return nil, fmt.Errorf("compile: %w", err)
		}
	}

	// Graph inputs (IR < 4 also lists initializers as inputs: those are not inputs).
	for _, in := range g.GetInput() {
		name := in.GetName()
		if _, ok := p.ids[name]; ok {
			continue
		}
		io := engine.IO{Name: name}
		if tt := in.GetType().GetTensorType(); tt != nil {
			io.Type = tt.GetElemType()
			if sh := tt.GetShape(); sh != nil {
				io.Shape = make([]int64, len(sh.GetDim()))
				for k, d := range sh.GetDim() {
					io.Shape[k] = -1
					if dv, ok := d.GetValue().(*onnxpb.TensorShapeProto_Dimension_DimValue); ok && dv.DimValue > 0 {
						io.Shape[k] = dv.DimValue
					}
				}
			}
		}
		id := p.newValue(name)
		p.isInput[id] = true
		p.inputs = append(p.inputs, io)
		p.inIDs = append(p.inIDs, id)
	}

	// Nodes, in the graph's (topological) order.
	var fused map[*onnxpb.NodeProto]*fusion
	var skip map[*onnxpb.NodeProto]bool
	if !opt.NoFusion {
		fused, skip = findFusions(g)
		findSplitFusions(g, fused, skip)
		if opt.Precision == engine.BF16 && !noAttnFusion {
			findAttnFusions(g, p.opset, fused, skip)
		}
	}
	for _, n := range g.GetNode() {
		if skip[n] {
			continue
		}
		var err error
		if f := fused[n]; f != nil {
			err = p.compileNode(f.node, f.mk)
		} else {
			err = p.compileNode(n, nil)
		}
		if err != nil {
			return nil, err
		}
	}

	// Outputs.
	for _, o := range g.GetOutput() {
		id, ok := p.ids[o.GetName()]
		if !ok {
			return nil, fmt.Errorf("compile: graph output %q is not produced by any node", o.GetName())
		}
		io := engine.IO{Name: o.GetName()}
		if tt := o.GetType().GetTensorType(); tt != nil {
			io.Type = tt.GetElemType()
			if sh := tt.GetShape(); sh != nil {
				io.Shape = make([]int64, len(sh.GetDim()))
				for k, d := range sh.GetDim() {
					io.Shape[k] = -1
					if dv, ok := d.GetValue().(*onnxpb.TensorShapeProto_Dimension_DimValue); ok && dv.DimValue > 0 {
						io.Shape[k] = dv.DimValue
					}
				}
			}
		}
		p.outputs = append(p.outputs, io)
		p.outIDs = append(p.outIDs, id)
	}
	p.planFrees()
	return p, nil
}

// floatInitializer makes a float32 tensor from an initializer, straight from its
// raw_data when it has one (no Go copy of a large model's weights).
func floatInitializer(init *onnxpb.TensorProto) (*ts.Tensor, error) {
	dims := init.GetDims()
	if raw := init.GetRawData(); len(raw) > 0 && int64(len(raw)) == 4*constfold.Prod(dims) {
		return tensorFromData(unsafe.Pointer(&raw[0]), dims, 4, gotch.Float)
	}
	vals, err := onnxio.Floats(init)
	if err != nil {
		return nil, err
	}
	return tensorFromFloats(vals, dims)
}

func (p *Program) newValue(name string) int {
	id := len(p.names)
	p.names = append(p.names, name)
	p.ids[name] = id
	p.static = append(p.static, value{})
	p.isStatic = append(p.isStatic, false)
	p.isParam = append(p.isParam, false)
	p.isInput = append(p.isInput, false)
	return id
}

func (p *Program) setStatic(id int, v value) {
	v.static = true
	p.static[id] = v
	p.isStatic[id] = true
}

// noFold lists ops that must run every time even on constant inputs.
var noFold = map[string]bool{"Dropout": true, "RandomNormal": true, "RandomUniform": true,
	"RandomNormalLike": true, "RandomUniformLike": true, "Bernoulli": true}

// maxFoldedFill is the largest ConstantOfShape output (elements) folded at compile
// time. Larger fills (the zeros of a sparse delta's ScatterND when it is not fused,
// as with NoFusion) are made at run time and freed after their last use instead of
// being held for the Program's life.
const maxFoldedFill = 4096

// bigFill reports whether n is a ConstantOfShape whose (constant) shape asks for more
// than maxFoldedFill elements.
func bigFill(op string, static []value) bool {
	if op != "ConstantOfShape" || len(static) == 0 || static[0].h == nil {
		return false
	}
	dims := static[0].h.Ints()
	for _, d := range dims {
		if d <= 0 {
			return false // empty, or negative (the kernel reports it)
		}
	}
	n := int64(1)
	for _, d := range dims {
		if d > maxFoldedFill/n {
			return true
		}
		n *= d
	}
	return false
}

// compileNode adds n's step (or folds it); mk overrides the op's kernel (fusions).
func (p *Program) compileNode(n *onnxpb.NodeProto, mk opFunc) error {
	name, op := n.GetName(), n.GetOpType()
	if name == "" && len(n.GetOutput()) > 0 {
		name = n.GetOutput()[0]
	}
	if d := n.GetDomain(); d != "" && d != "ai.onnx" {
		return fmt.Errorf("compile: node %q: op %q of domain %q is not supported", name, op, d)
	}
	if mk == nil {
		var ok bool
		if mk, ok = ops[op]; !ok {
			return fmt.Errorf("compile: node %q: op %q is not supported", name, op)
		}
	}
	s := &step{name: name, op: op}
	c := &nodeCtx{n: n, opset: p.opset, name: name}
	allStatic, anyParam := true, false
	for _, in := range n.GetInput() {
		if in == "" {
			s.in = append(s.in, -1)
			c.static = append(c.static, value{})
			continue
		}
		id, ok := p.ids[in]
		if !ok {
			return fmt.Errorf("compile: node %q (%s): input %q is not produced by any earlier node (graph not in topological order?)", name, op, in)
		}
		s.in = append(s.in, id)
		if p.isStatic[id] {
			c.static = append(c.static, p.static[id])
		} else {
			c.static = append(c.static, value{})
			allStatic = false
		}
		anyParam = anyParam || p.isParam[id]
	}
	k, err := mk(c)
	if err != nil {
		return fmt.Errorf("compile: node %q (%s): %w", name, op, err)
	}
	s.k = k
	for _, out := range n.GetOutput() {
		if out == "" {
			s.out = append(s.out, -1)
			continue
		}
		if _, dup := p.ids[out]; dup {
			return fmt.Errorf("compile: node %q (%s): value %q is produced twice", name, op, out)
		}
		s.out = append(s.out, p.newValue(out))
	}

	// Identity of a constant or a weight: the same value under another name.
	if op == "Identity" && len(s.in) == 1 && s.in[0] >= 0 && p.isStatic[s.in[0]] && len(s.out) == 1 && s.out[0] >= 0 {
		p.setStatic(s.out[0], p.static[s.in[0]])
		p.isParam[s.out[0]] = p.isParam[s.in[0]]
		return nil
	}
	if allStatic && !anyParam && !noFold[op] && !bigFill(op, c.static) {
		r := &runCtx{p: p}
		ins := make([]value, len(s.in))
		for k, id := range s.in {
			if id >= 0 {
				ins[k] = p.static[id]
			}
		}
		outs, err := k(r, ins)
		r.dropTemps()
		if err != nil {
			return fmt.Errorf("compile: node %q (%s): %w", name, op, err)
		}
		for j, id := range s.out {
			if id < 0 || j >= len(outs) {
				if j < len(outs) && outs[j].t != nil {
					outs[j].t.Drop()
				}
				continue
			}
			if outs[j].none() {
				return fmt.Errorf("compile: node %q (%s): output %d not computed", name, op, j)
			}
			p.setStatic(id, outs[j])
		}
		return nil
	}
	p.steps = append(p.steps, s)
	return nil
}

// planFrees records, for each step, the dynamic values whose last consumer it is.
func (p *Program) planFrees() {
	last := make([]int, len(p.names))
	for k := range last {
		last[k] = -1
	}
	for i, s := range p.steps {
		for _, id := range s.in {
			if id >= 0 {
				last[id] = i
			}
		}
	}
	keep := map[int]bool{}
	for _, id := range p.outIDs {
		keep[id] = true
	}
	for i, s := range p.steps {
		seen := map[int]bool{}
		for _, id := range s.in {
			if id >= 0 && !seen[id] && last[id] == i && !p.isStatic[id] && !p.isInput[id] && !keep[id] {
				s.free = append(s.free, id)
				seen[id] = true
			}
		}
		for _, id := range s.out {
			if id >= 0 && last[id] == -1 && !keep[id] {
				s.free = append(s.free, id) // never used
			}
		}
	}
}

// Inputs describes the graph inputs the caller feeds.
func (p *Program) Inputs() []engine.IO { return p.inputs }

// Outputs describes the graph outputs Run returns.
func (p *Program) Outputs() []engine.IO { return p.outputs }

// Params lists the float initializers (the weights), in graph order.
func (p *Program) Params() []string { return append([]string{}, p.order...) }

// Trainable lists the initializers compiled with requires_grad.
func (p *Program) Trainable() []string { return append([]string{}, p.trainable...) }

// Steps is the number of nodes that run at run time (the rest were folded).
func (p *Program) Steps() int { return len(p.steps) }

// FixedBatch is the batch size the graph's first input fixes (its first dimension), or
// 0 if that dimension is dynamic.
func (p *Program) FixedBatch() int {
	if len(p.inputs) == 0 || len(p.inputs[0].Shape) == 0 || p.inputs[0].Shape[0] < 0 {
		return 0
	}
	return int(p.inputs[0].Shape[0])
}

// run executes the graph on inputs (by graph input name). In train mode autograd
// records the computation (call Backward on a loss made from the outputs) and Dropout
// drops; in eval mode no gradient is tracked and Dropout is the identity. The caller
// owns the returned tensors and must Drop them. Inputs are not modified or dropped.
func (p *Program) run(inputs map[string]*ts.Tensor, train bool) (map[string]*ts.Tensor, error) {
	if p.closed {
		return nil, errors.New("run: program is closed")
	}
	env := make([]value, len(p.names))
	copy(env, p.static)
	for k, io := range p.inputs {
		t, ok := inputs[io.Name]
		if !ok || t == nil {
			return nil, fmt.Errorf("run: missing input %q", io.Name)
		}
		if io.Shape != nil {
			shape, err := sizeOf(t)
			if err != nil {
				return nil, fmt.Errorf("run: input %q: %w", io.Name, err)
			}
			if err := checkShape(io, shape); err != nil {
				return nil, fmt.Errorf("run: %w", err)
			}
		}
		env[p.inIDs[k]] = value{t: t}
	}
	for name := range inputs {
		if _, ok := p.ids[name]; !ok || !p.isInput[p.ids[name]] {
			return nil, fmt.Errorf("run: %q is not an input of the graph", name)
		}
	}
	prev, err := ts.GradSetEnabled(train)
	if err != nil {
		return nil, fmt.Errorf("run: %w", torchErr(err))
	}
	defer ts.GradSetEnabled(prev)
	if p.precision == engine.BF16 {
		was, err := autocastEnter()
		if err != nil {
			return nil, fmt.Errorf("run: %w", err)
		}
		defer autocastExit(was)
	}

	r := &runCtx{p: p, train: train}
	fail := func(err error) (map[string]*ts.Tensor, error) {
		r.dropTemps()
		for id, v := range env {
			if v.t != nil && !p.isStatic[id] && !p.isInput[id] {
				v.t.Drop()
			}
		}
		return nil, err
	}
	ins := make([]value, 0, 8)
	for _, s := range p.steps {
		ins = ins[:0]
		for _, id := range s.in {
			if id < 0 {
				ins = append(ins, value{})
			} else {
				ins = append(ins, env[id])
			}
		}
		outs, err := s.k(r, ins)
		r.dropTemps()
		if err != nil {
			return fail(fmt.Errorf("node %q (%s): %w", s.name, s.op, err))
		}
		for j, id := range s.out {
			if j >= len(outs) {
				return fail(fmt.Errorf("node %q (%s): output %d not computed", s.name, s.op, j))
			}
			if id < 0 {
				if outs[j].t != nil {
					outs[j].t.Drop()
				}
				continue
			}
			env[id] = outs[j]
		}
		for _, id := range s.free {
			if env[id].t != nil {
				env[id].t.Drop()
			}
			env[id] = value{}
		}
	}
	res := make(map[string]*ts.Tensor, len(p.outputs))
	handed := map[int]bool{}
	for k, io := range p.outputs {
		id := p.outIDs[k]
		v := env[id]
		var t *ts.Tensor
		switch {
		case v.t != nil && !p.isStatic[id] && !p.isInput[id] && !handed[id]:
			t = v.t
			handed[id] = true
		case v.t != nil:
			t, err = v.t.ShallowClone()
			err = torchErr(err)
		case v.h != nil:
			t, err = tensorFromHost(v.h)
		default:
			err = errors.New("not computed")
		}
		if err == nil && io.Type == onnxio.Float {
			t, err = asFloat32(t) // bfloat16 under autocast
		}
		if err != nil {
			for _, t := range res {
				t.Drop()
			}
			return fail(fmt.Errorf("run: output %q: %w", io.Name, err))
		}
		res[io.Name] = t
	}
	return res, nil
}

func checkShape(io engine.IO, shape []int64) error {
	if len(shape) != len(io.Shape) {
		return fmt.Errorf("input %q has shape %v, the graph wants rank %d (%v)", io.Name, shape, len(io.Shape), io.Shape)
	}
	for k, d := range io.Shape {
		if d >= 0 && shape[k] != d {
			return fmt.Errorf("input %q has shape %v, the graph wants %v (-1: any)", io.Name, shape, io.Shape)
		}
	}
	return nil
}

// Close frees every tensor the Program holds. Call it on the torch thread.
func (p *Program) Close() {
	if p == nil || p.closed {
		return
	}
	p.closed = true
	p.squares.close()
	p.squares = nil
	for id, v := range p.static {
		if v.t != nil && !p.isParam[id] {
			v.t.Drop()
		}
	}
	for _, pr := range p.params {
		pr.t.Drop()
	}
	for _, t := range p.hostCache {
		t.Drop()
	}
	for _, t := range p.gradSq {
		t.Drop()
	}
	p.gradSq = nil
	p.static = nil
	p.params = map[string]*param{}
	p.hostCache = nil
	releaseFreeMemory()
}
