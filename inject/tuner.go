package inject

import (
	"fmt"
	"slices"
	"strings"
)

// Kind names a tuner: a tuning method. Plans record which tuner made which tensor.
type Kind string

// The tuners. LoRA, Adapter (and any other module tuner) are also allocation types
// (allocate --type); sparse deltas, whole tensors and the head are what SPT and the
// baselines add around them.
const (
	KindLoRA    Kind = "lora"    // LoRA in parallel with a block matrix
	KindAdapter Kind = "adapter" // Adapter in sequence on a block matrix's output
	KindSparse  Kind = "sparse"  // chosen entries of a weight or vector, as a trainable delta
	KindWhole   Kind = "whole"   // a whole tensor trained in place
	KindHead    Kind = "head"    // the classifier head (new, or the model's own)
)

// Part names one tensor of a tuner's module.
type Part string

// Parts of the tuners' modules. Shapes: LoRA A [r,in], B [out,r]; Adapter down
// [r,out], down_bias [r], up [out,r], up_bias [out]; sparse values [n] and indices
// [n, rank] (int64, not trainable; indices into Base as stored); whole: the trained
// tensor (from entry Offset for vectors, output unit Offset for matrices, when it is
// shared by a fused q/k/v); head weight and bias.
const (
	PartA        Part = "A"
	PartB        Part = "B"
	PartDown     Part = "down"
	PartDownBias Part = "down_bias"
	PartUp       Part = "up"
	PartUpBias   Part = "up_bias"
	PartValues   Part = "values"
	PartIndices  Part = "indices"
	PartWhole    Part = "whole"
	PartWeight   Part = "weight"
	PartBias     Part = "bias"
)

// Tuner is one tuning method. It owns everything about the method: its parameter
// count, the graph it injects, how its trained tensors fold into merged weights, and
// its tensors in an adapter-ready model (.onnx_adapter files). The pipeline finds a
// tuner by the Kind a plan entry or record names and asks it; nothing else knows a
// method's tensors.
type Tuner interface {
	Kind() Kind
	// Params is the number of trainable parameters the tuner adds on t (for a
	// module tuner: the module alone, without extra sparse entries).
	Params(t Target) int64
	// Inject rewrites b's graph for t and records the tensors it made.
	Inject(b *Builder, t Target) error
	// Fold applies a trained module's tensors to merged weights.
	Fold(w *Weights, m Module) error
	// Fill writes one task's values for a module of an adapter-ready model.
	Fill(f *Fill, m Module) error
	// Delta says whether the tuner's tensor of part p is a delta whose zero leaves the
	// base model's function unchanged (an adapter-ready model's inputs of such parts
	// default to zero; the others keep the value inject gave them).
	Delta(p Part) bool
	// FoldsIntoWeight says whether Fold can apply the tuner's module on a layer to a
	// weight alone (no nodes kept), so that a task with it fits an adapter-ready slot
	// that trains the layer whole.
	FoldsIntoWeight() bool
}

// registry lists the tuners; module tuners are the structured types allocate places
// on block matrices (--type).
var registry = []struct {
	t      Tuner
	module bool
}{
	{loraTuner{}, true},
	{adapterTuner{}, true},
	{doraTuner{}, true},
	{sparseTuner{}, false},
	{wholeTuner{}, false},
	{headTuner{}, false},
}

// TunerOf returns the tuner of kind k.
func TunerOf(k Kind) (Tuner, bool) {
	for _, r := range registry {
		if r.t.Kind() == k {
			return r.t, true
		}
	}
	return nil, false
}

// ModuleTypes lists the structured module types (allocate --type).
func ModuleTypes() []Type {
	var out []Type
	for _, r := range registry {
		if r.module {
			out = append(out, Type(r.t.Kind()))
		}
	}
	return out
}

func moduleTypeList() string {
	var s []string
	for _, t := range ModuleTypes() {
		s = append(s, string(t))
	}
	return strings.Join(s, ", ")
}

// isModule reports whether a layer mode is a structured module's.
func isModule(mode string) bool {
	return slices.Contains(ModuleTypes(), Type(mode))
}

// moduleParams is the parameter count of a module of type typ and rank r on an
// in→out matrix.
func moduleParams(typ Type, r, in, out int64) int64 {
	t, ok := TunerOf(Kind(typ))
	if !ok {
		return 0
	}
	return t.Params(Target{Layer: &LayerPlan{Rank: int(r), In: int(in), Out: int(out), Mode: string(typ)}})
}

// ModuleParams is the parameter count of a module of type typ and rank r on an
// in→out matrix (0 for an unknown type).
func ModuleParams(typ Type, r, in, out int64) int64 { return moduleParams(typ, r, in, out) }

// LayerTuner returns the tuner of a layer mode (ModeFull is the whole tuner).
func LayerTuner(mode string) (Tuner, bool) { return TunerOf(layerKind(mode)) }

// layerKind is the tuner of a layer mode (ModeFull is the whole tuner).
func layerKind(mode string) Kind {
	if mode == ModeFull {
		return KindWhole
	}
	return Kind(mode)
}

// Target is what a tuner works on: exactly one of a block matrix, a block vector, a
// non-block tensor trained whole (class token, embeddings) or the head.
type Target struct {
	Layer  *LayerPlan
	Vector *VectorPlan
	Tensor *TensorPlan
	Head   *HeadPlan
}

// Name is the target's name, as records give it in Of.
func (t Target) Name() string {
	switch {
	case t.Layer != nil:
		return t.Layer.Name
	case t.Vector != nil:
		return t.Vector.Name
	case t.Tensor != nil:
		return t.Tensor.Name
	case t.Head != nil:
		return HeadName
	}
	return ""
}

// HeadName is the head's name in records.
const HeadName = "head"

// Module is one tuner's tensors on one target, as an injected model records them.
type Module struct {
	Tuner   Kind
	Target  Target
	Tensors []Injected
}

// Tensor returns the module's record of part p.
func (m Module) Tensor(p Part) (Injected, bool) {
	for _, r := range m.Tensors {
		if r.Part == p {
			return r, true
		}
	}
	return Injected{}, false
}

// Init is the name of the module's tensor p, or an error naming the module.
func (m Module) Init(p Part) (string, error) {
	r, ok := m.Tensor(p)
	if !ok {
		return "", fmt.Errorf("%s of %s: no %s tensor recorded", m.Tuner, m.Target.Name(), p)
	}
	return r.Init, nil
}

// Modules groups the plan's records by target and tuner, in record order (the order
// Apply made them, which is the order their effects compose in), with their targets.
func (p *Plan) Modules() ([]Module, error) {
	var out []Module
	at := map[[2]string]int{}
	for _, r := range p.Injected {
		key := [2]string{r.Of, string(r.Tuner)}
		i, ok := at[key]
		if !ok {
			t, err := p.target(r.Of)
			if err != nil {
				return nil, fmt.Errorf("record %s: %w", r.Init, err)
			}
			if _, ok := TunerOf(r.Tuner); !ok {
				return nil, fmt.Errorf("record %s: unknown tuner %q", r.Init, r.Tuner)
			}
			i = len(out)
			at[key] = i
			out = append(out, Module{Tuner: r.Tuner, Target: t})
		}
		out[i].Tensors = append(out[i].Tensors, r)
	}
	return out, nil
}

// Module returns the plan's module of tuner k on the target named of.
func (p *Plan) Module(of string, k Kind) (Module, bool) {
	m := Module{Tuner: k}
	for _, r := range p.Injected {
		if r.Of == of && r.Tuner == k {
			m.Tensors = append(m.Tensors, r)
		}
	}
	if len(m.Tensors) == 0 {
		return m, false
	}
	t, err := p.target(of)
	m.Target = t
	return m, err == nil
}

// target finds the plan entry named name.
func (p *Plan) target(name string) (Target, error) {
	if name == HeadName {
		return Target{Head: &p.Head}, nil
	}
	for i := range p.Layers {
		if p.Layers[i].Name == name {
			return Target{Layer: &p.Layers[i]}, nil
		}
	}
	for i := range p.Vectors {
		if p.Vectors[i].Name == name {
			return Target{Vector: &p.Vectors[i]}, nil
		}
	}
	if p.ClassToken != nil && p.ClassToken.Name == name {
		return Target{Tensor: p.ClassToken}, nil
	}
	for i := range p.Extra {
		if p.Extra[i].Name == name {
			return Target{Tensor: &p.Extra[i]}, nil
		}
	}
	return Target{}, fmt.Errorf("%q is not in the plan", name)
}
