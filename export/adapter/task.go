package adapter

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// ForTask gives task's value for every adapter input of ready (a model BuildReady
// made from a set of tasks that included task, or whose union covers it): each module
// of the ready model's plan asks its tuner (inject.Tuner.Fill) for the task's values —
// the task's LoRA and Adapter tensors padded to the ready rank (LoRA B times the
// task's LoRA scaling), its sparse values at their places in the union index lists
// (zero elsewhere), its vectors and head (padded), its modules folded into a tensor
// the ready model trains whole — and for every slot the task does not use, the value
// that leaves the base model unchanged there. The result passes Check.
func ForTask(ready, task *onnxpb.ModelProto) (map[string]Tensor, error) {
	info, err := Info(ready)
	if err != nil {
		return nil, err
	}
	rp, err := taskPlan(ready, "adapter-ready model")
	if err != nil {
		return nil, err
	}
	tp, err := taskPlan(task, "task model")
	if err != nil {
		return nil, err
	}
	if tp.BaseFingerprint != info.BaseFingerprint {
		return nil, fmt.Errorf("the task was tuned from another base model (its base %s, the adapter-ready model's %s)", shortFP(tp.BaseFingerprint), shortFP(info.BaseFingerprint))
	}
	if err := covered(rp, tp, info); err != nil {
		return nil, err
	}
	mods, err := rp.Modules()
	if err != nil {
		return nil, fmt.Errorf("adapter-ready model: %w", err)
	}
	f := inject.NewFill(ready, task, rp, tp)
	f.HeadLayout, f.PadLogit = info.HeadLayout, PadLogit
	for _, m := range mods {
		tu, _ := inject.TunerOf(m.Tuner)
		if err := tu.Fill(f, m); err != nil {
			return nil, fmt.Errorf("adapter for %s of %s: %w", m.Tuner, m.Target.Name(), err)
		}
	}
	g := surgery.New(ready)
	out := map[string]Tensor{}
	for _, in := range info.Inputs {
		t := g.Initializer(in.Name)
		if t == nil {
			return nil, fmt.Errorf("adapter-ready model: input %s has no default", in.Name)
		}
		if v, ok := f.Values()[in.Name]; ok {
			out[in.Name] = FloatTensor(t.Dims, v)
			continue
		}
		d, err := defaultTensor(t)
		if err != nil {
			return nil, err
		}
		out[in.Name] = d
	}
	return out, nil
}

// Defaults are the default values of ready's adapter inputs (the base model's
// function): what to feed as plain inputs to run the base model.
func Defaults(ready *onnxpb.ModelProto) (map[string]Tensor, error) {
	slots, err := Slots(ready)
	if err != nil {
		return nil, err
	}
	g := surgery.New(ready)
	out := map[string]Tensor{}
	for _, s := range slots {
		d, err := defaultTensor(g.Initializer(s.Name))
		if err != nil {
			return nil, err
		}
		out[s.Name] = d
	}
	return out, nil
}

func defaultTensor(t *onnxpb.TensorProto) (Tensor, error) {
	raw, err := onnxio.Bytes(t)
	if err != nil {
		return Tensor{}, err
	}
	return Tensor{Dims: slices.Clone(t.Dims), DataType: t.GetDataType(), Raw: slices.Clone(raw)}, nil
}

// foldsIntoWeight asks the tuner of a layer mode whether a weight trained whole can
// express its module.
func foldsIntoWeight(mode string) bool {
	t, ok := inject.LayerTuner(mode)
	return ok && t.FoldsIntoWeight()
}

// covered checks that every tensor the task tuned has a slot in the ready model.
func covered(rp, tp *inject.Plan, info *ReadyInfo) error {
	rebuild := "; rebuild the adapter-ready model with this task among its tasks"
	rLayers := map[string]*inject.LayerPlan{}
	for i := range rp.Layers {
		rLayers[rp.Layers[i].Name] = &rp.Layers[i]
	}
	rVectors := map[string]*inject.VectorPlan{}
	for i := range rp.Vectors {
		rVectors[rp.Vectors[i].Name] = &rp.Vectors[i]
	}
	for _, l := range tp.Layers {
		r := rLayers[l.Name]
		if r == nil {
			return fmt.Errorf("the task tunes layer %s, which the adapter-ready model has no slot for%s", l.Name, rebuild)
		}
		ok := r.Mode == inject.ModeFull && foldsIntoWeight(l.Mode) ||
			r.Mode == l.Mode && r.Rank >= l.Rank ||
			l.Mode == inject.ModeSparse && r.Rank > 0
		if !ok {
			return fmt.Errorf("the task tunes layer %s as %s rank %d, the adapter-ready model has %s rank %d%s", l.Name, l.Mode, l.Rank, r.Mode, r.Rank, rebuild)
		}
		if r.Mode != inject.ModeFull && !subset(l.Indices, r.Indices) {
			return fmt.Errorf("the task's sparse entries of %s are not all in the adapter-ready model's%s", l.Name, rebuild)
		}
	}
	for _, x := range tp.Vectors {
		r := rVectors[x.Name]
		if r == nil || (x.Mode == inject.ModeFull && r.Mode != inject.ModeFull) ||
			(r.Mode != inject.ModeFull && !subset(x.Indices, r.Indices)) {
			return fmt.Errorf("the task tunes vector %s (%s), which the adapter-ready model has no slot for%s", x.Name, x.Mode, rebuild)
		}
	}
	if tp.Head.Classes > info.Classes {
		return fmt.Errorf("the task has %d classes, the adapter-ready model's head %d%s", tp.Head.Classes, info.Classes, rebuild)
	}
	if tp.ClassToken != nil && rp.ClassToken == nil {
		return fmt.Errorf("the task tunes the class token, the adapter-ready model does not%s", rebuild)
	}
	for _, e := range tp.Extra {
		if !slices.ContainsFunc(rp.Extra, func(x inject.TensorPlan) bool { return x.Name == e.Name }) {
			return fmt.Errorf("the task tunes %s, the adapter-ready model does not%s", e.Name, rebuild)
		}
	}
	return nil
}

func subset(a, b []int64) bool {
	for _, x := range a {
		if _, ok := slices.BinarySearch(b, x); !ok {
			return false
		}
	}
	return true
}

// Slot is one adapter input of a model, as its graph declares it.
type Slot struct {
	Name     string
	Dims     []int64
	DataType int32
}

// Slots are the adapter inputs of ready: its graph inputs that have a default
// initializer (ONNX Runtime's overridable initializers), restricted to those its
// ReadyInfo lists when it has one, in graph-input order.
func Slots(ready *onnxpb.ModelProto) ([]Slot, error) {
	g := ready.GetGraph()
	inits := map[string]*onnxpb.TensorProto{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = t
	}
	var listed map[string]bool
	if info, err := Info(ready); err == nil {
		listed = map[string]bool{}
		for _, in := range info.Inputs {
			listed[in.Name] = true
		}
	}
	var out []Slot
	for _, in := range g.GetInput() {
		t := inits[in.GetName()]
		if t == nil || (listed != nil && !listed[in.GetName()]) {
			continue
		}
		out = append(out, Slot{Name: in.GetName(), Dims: slices.Clone(t.Dims), DataType: t.GetDataType()})
	}
	if len(out) == 0 {
		return nil, errors.New("the model has no adapter inputs (graph inputs with a default initializer); make an adapter-ready model with `sptctl export --adapters`")
	}
	return out, nil
}

// Check compares tensors (an adapter's) with ready's adapter inputs: every tensor
// must name an adapter input and have its exact shape and element type and the
// bytes they need, and every adapter input must be given (a missing one would
// silently run with the base model's value). The error names each offending tensor.
func Check(ready *onnxpb.ModelProto, tensors map[string]Tensor) error {
	slots, err := Slots(ready)
	if err != nil {
		return err
	}
	byName := map[string]Slot{}
	for _, s := range slots {
		byName[s.Name] = s
	}
	required := map[string]bool{}
	for _, in := range ready.GetGraph().GetInput() {
		required[in.GetName()] = true
	}
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	var problems []string
	for _, n := range names {
		t := tensors[n]
		s, ok := byName[n]
		switch {
		case !ok && required[n]:
			problems = append(problems, fmt.Sprintf("%q is a required model input, not an adapter input", n))
			continue
		case !ok:
			problems = append(problems, fmt.Sprintf("%q is not an input of the model (%s)", n, closest(n, slots)))
			continue
		}
		if t.DataType != s.DataType {
			problems = append(problems, fmt.Sprintf("%q is %s, the model's input is %s", n, typeName(t.DataType), typeName(s.DataType)))
			continue
		}
		if !slices.Equal(t.Dims, s.Dims) {
			problems = append(problems, fmt.Sprintf("%q has shape %v, the model's input has %v", n, t.Dims, s.Dims))
			continue
		}
		if err := t.checkSize(); err != nil {
			problems = append(problems, fmt.Sprintf("%q: %v", n, err))
		}
	}
	var missing []string
	for _, s := range slots {
		if _, ok := tensors[s.Name]; !ok {
			missing = append(missing, s.Name)
		}
	}
	if len(missing) > 0 {
		sample := missing
		if len(sample) > 5 {
			sample = sample[:5]
		}
		problems = append(problems, fmt.Sprintf("%d of the model's %d adapter inputs are missing (%s%s)", len(missing), len(slots), strings.Join(sample, ", "), map[bool]string{true: ", …"}[len(missing) > 5]))
	}
	if len(problems) == 0 {
		return nil
	}
	if len(problems) > 8 {
		problems = append(problems[:8], fmt.Sprintf("and %d more", len(problems)-8))
	}
	return fmt.Errorf("adapter does not fit the model: %s", strings.Join(problems, "; "))
}

// closest suggests the adapter input whose name shares the longest prefix with n.
func closest(n string, slots []Slot) string {
	best, bestLen := "", -1
	for _, s := range slots {
		k := 0
		for k < len(n) && k < len(s.Name) && n[k] == s.Name[k] {
			k++
		}
		if k > bestLen {
			best, bestLen = s.Name, k
		}
	}
	if best == "" {
		return "it has no adapter inputs"
	}
	return fmt.Sprintf("nearest adapter input: %q", best)
}

// TaskClasses is the number of classes a task's adapter tensors serve: the head
// bias entries before the first PadLogit. ok is false when tensors have no head
// bias input of ready.
func TaskClasses(ready *onnxpb.ModelProto, tensors map[string]Tensor) (classes int, ok bool) {
	info, err := Info(ready)
	if err != nil {
		return 0, false
	}
	for _, in := range info.Inputs {
		if in.Tuner != inject.KindHead || in.Part != inject.PartBias {
			continue
		}
		t, found := tensors[in.Name]
		if !found {
			return 0, false
		}
		b, err := t.Floats()
		if err != nil {
			return 0, false
		}
		n := len(b)
		for n > 0 && b[n-1] == PadLogit {
			n--
		}
		return n, true
	}
	return 0, false
}
