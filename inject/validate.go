package inject

import (
	"errors"
	"fmt"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// MaxClasses is the largest class count a plan, an allocation or a sensitivity run
// accepts. Larger counts are typing mistakes (or values meant to exhaust memory: the
// head alone is classes × hidden size floats), not tasks.
const MaxClasses = 100_000

// maxDim bounds the matrix and vector sizes a plan may state before they are compared
// with the model, so that products of them cannot overflow int64.
const maxDim = 1 << 31

// CheckClasses refuses a class count outside 1…MaxClasses (what names the count, e.g.
// "--classes", starts the message).
func CheckClasses(what string, classes int) error {
	if classes < 1 || classes > MaxClasses {
		return fmt.Errorf("%s %d: want a class count from 1 to %d", what, classes, MaxClasses)
	}
	return nil
}

// MaxRank is the largest rank a structured module may have on v: the smallest side of
// any of its block matrices (a rank above it adds parameters without adding capacity).
func MaxRank(v *surgery.ViT) int {
	r := 0
	for _, l := range v.Linears() {
		if m := min(l.In, l.Out); r == 0 || m < r {
			r = m
		}
	}
	return r
}

// checkRank refuses a rank outside 1…MaxRank(v).
func checkRank(rank int, v *surgery.ViT) error {
	if mr := MaxRank(v); rank < 1 || rank > mr {
		return fmt.Errorf("rank %d: want 1 to %d (the smallest side of the model's block matrices)", rank, mr)
	}
	return nil
}

// Validate checks plan p completely against the base model m before anything is
// injected: the plan's own consistency (modes, ranks, parameter counts, ascending
// indices, and that the totals it states are the totals its entries imply), that it was
// made for m (fingerprint), and that each layer, vector and tensor it names exists in m
// with the weight, shape and offset it states, with every sparse index inside its
// entries and every rank at most the smaller side of its matrix. Apply runs the same
// checks first; Validate lets a caller refuse a plan without changing a model.
func Validate(m *onnxpb.ModelProto, p *Plan, opt ApplyOptions) error {
	_, err := check(m, p, opt)
	return err
}

// check runs Validate's checks and returns the Builder that Apply then runs.
func check(m *onnxpb.ModelProto, p *Plan, opt ApplyOptions) (*Builder, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	opset := onnxio.Opset(m)
	if opset < 11 {
		return nil, fmt.Errorf("inject: opset %d is too old; ScatterND and Pad need opset 11 or newer", opset)
	}
	fp, err := onnxio.Fingerprint(m.GetGraph())
	if err != nil {
		return nil, err
	}
	if err := p.Check(fp); err != nil {
		return nil, err
	}
	if !(opt.Dropout >= 0 && opt.Dropout < 1) {
		return nil, fmt.Errorf("inject: dropout ratio %g not in [0, 1)", opt.Dropout)
	}
	classes := p.Head.Classes
	if opt.Classes != 0 && opt.Classes != classes {
		return nil, fmt.Errorf("inject: %d classes asked, but the plan was made for %d (its budget counts the head); allocate again with --classes %d", opt.Classes, classes, opt.Classes)
	}
	g := surgery.New(m)
	v, err := surgery.FindViT(g)
	if err != nil {
		return nil, err
	}
	in := newBuilder(g, v, p, opt, opset)
	if err := in.findSites(); err != nil {
		return nil, err
	}
	if err := in.checkPlan(); err != nil {
		return nil, err
	}
	if opt.KeepHead && v.Head.Out != classes {
		return nil, fmt.Errorf("inject: --keep-head needs a plan for the model's %d classes, this one is for %d", v.Head.Out, classes)
	}
	if v.Head.In != p.Head.In {
		return nil, fmt.Errorf("inject: the model's head has %d inputs, the plan's %d", v.Head.In, p.Head.In)
	}
	return in, nil
}

// checkSizes refuses sizes in a plan that no model has, before its counts are
// computed from them: negative or huge matrix and vector sizes, ranks outside
// 1…min(in, out), class counts outside 1…MaxClasses, negative counts.
func (p *Plan) checkSizes() error {
	if p.Budget < 0 {
		return fmt.Errorf("plan budget %d is negative", p.Budget)
	}
	for _, l := range p.Layers {
		if l.In <= 0 || l.Out <= 0 || l.In > maxDim || l.Out > maxDim || l.Offset < 0 || l.Offset > maxDim {
			return fmt.Errorf("plan layer %s: size %dx%d at offset %d", l.Name, l.In, l.Out, l.Offset)
		}
		if isModule(l.Mode) {
			if l.Rank <= 0 || l.Rank > min(l.In, l.Out) {
				return fmt.Errorf("plan layer %s: rank %d, want 1 to %d (the smaller side of its %dx%d matrix)", l.Name, l.Rank, min(l.In, l.Out), l.In, l.Out)
			}
		}
		if int64(len(l.Indices)) > int64(l.In)*int64(l.Out) {
			return fmt.Errorf("plan layer %s: %d indices for a %dx%d matrix", l.Name, len(l.Indices), l.In, l.Out)
		}
		if l.Params < 0 || l.Sensitive < 0 {
			return fmt.Errorf("plan layer %s: negative count", l.Name)
		}
	}
	for _, v := range p.Vectors {
		if v.Size <= 0 || v.Size > maxDim || v.Offset < 0 || v.Offset > maxDim {
			return fmt.Errorf("plan vector %s: size %d at offset %d", v.Name, v.Size, v.Offset)
		}
		if len(v.Indices) > v.Size {
			return fmt.Errorf("plan vector %s: %d indices for %d entries", v.Name, len(v.Indices), v.Size)
		}
		if v.Params < 0 || v.Sensitive < 0 {
			return fmt.Errorf("plan vector %s: negative count", v.Name)
		}
	}
	if err := CheckClasses("plan head: classes", p.Head.Classes); err != nil {
		return err
	}
	if p.Head.In <= 0 || p.Head.In > maxDim {
		return fmt.Errorf("plan head: %d inputs", p.Head.In)
	}
	if p.ClassToken != nil && p.ClassToken.Params < 0 {
		return errors.New("plan class token: negative count")
	}
	for _, e := range p.Extra {
		if e.Params < 0 {
			return fmt.Errorf("plan tensor %s: negative count", e.Name)
		}
	}
	return nil
}

// checkLimits refuses options that no model of v's size can use (a rank above
// MaxRank(v), more than MaxClasses classes), and models the trainer cannot run: a
// plan for them would be refused only later, when training compiles the model.
func (o *Options) checkLimits(v *surgery.ViT, g *surgery.Graph) error {
	if err := engine.CheckOps(g.Proto()); err != nil {
		return err
	}
	if err := checkRank(o.Rank, v); err != nil {
		return err
	}
	if o.Classes != 0 {
		return CheckClasses("classes", o.Classes)
	}
	return nil
}
