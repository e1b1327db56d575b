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
// made from a set of tasks that included task, or whose union covers it): the task's
// LoRA and Adapter tensors padded to the ready rank (LoRA B times the task's LoRA
// scaling), its sparse values at their places in the union index lists (zero
// elsewhere), its vectors and head (padded), and for every slot the task does not
// use the value that leaves the base model unchanged there (zero deltas, base
// vectors). The result passes Check.
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
	f := &filler{ready: surgery.New(ready), task: surgery.New(task), rp: rp, tp: tp, info: info,
		rLayers: map[string]*inject.LayerPlan{}, rVectors: map[string]*inject.VectorPlan{},
		tLayers: map[string]*inject.LayerPlan{}, tVectors: map[string]*inject.VectorPlan{},
		tRec: map[[2]string]inject.Injected{}, out: map[string][]float32{}}
	for i := range rp.Layers {
		f.rLayers[rp.Layers[i].Name] = &rp.Layers[i]
	}
	for i := range rp.Vectors {
		f.rVectors[rp.Vectors[i].Name] = &rp.Vectors[i]
	}
	for i := range tp.Layers {
		f.tLayers[tp.Layers[i].Name] = &tp.Layers[i]
	}
	for i := range tp.Vectors {
		f.tVectors[tp.Vectors[i].Name] = &tp.Vectors[i]
	}
	for _, r := range tp.Injected {
		f.tRec[[2]string{r.Of, r.Role}] = r
	}
	if err := f.covered(); err != nil {
		return nil, err
	}
	out := map[string]Tensor{}
	for _, r := range rp.Injected {
		if err := f.fill(r); err != nil {
			return nil, fmt.Errorf("adapter for %s (%s of %s): %w", r.Init, r.Role, r.Of, err)
		}
	}
	for _, in := range info.Inputs {
		t := f.ready.Initializer(in.Name)
		if t == nil {
			return nil, fmt.Errorf("adapter-ready model: input %s has no default", in.Name)
		}
		if v, ok := f.out[in.Name]; ok {
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

// filler computes one task's adapter values.
type filler struct {
	ready, task        *surgery.Graph
	rp, tp             *inject.Plan
	info               *ReadyInfo
	rLayers, tLayers   map[string]*inject.LayerPlan
	rVectors, tVectors map[string]*inject.VectorPlan
	tRec               map[[2]string]inject.Injected
	out                map[string][]float32 // by ready initializer
}

// covered checks that every tensor the task tuned has a slot in the ready model.
func (f *filler) covered() error {
	rebuild := "; rebuild the adapter-ready model with this task among its tasks"
	for _, l := range f.tp.Layers {
		r := f.rLayers[l.Name]
		if r == nil {
			return fmt.Errorf("the task tunes layer %s, which the adapter-ready model has no slot for%s", l.Name, rebuild)
		}
		ok := r.Mode == inject.ModeFull && l.Mode != inject.ModeAdapter ||
			r.Mode == l.Mode && r.Rank >= l.Rank ||
			l.Mode == inject.ModeSparse && (r.Mode == inject.ModeLoRA || r.Mode == inject.ModeAdapter)
		if !ok {
			return fmt.Errorf("the task tunes layer %s as %s rank %d, the adapter-ready model has %s rank %d%s", l.Name, l.Mode, l.Rank, r.Mode, r.Rank, rebuild)
		}
		if r.Mode != inject.ModeFull && !subset(l.Indices, r.Indices) {
			return fmt.Errorf("the task's sparse entries of %s are not all in the adapter-ready model's%s", l.Name, rebuild)
		}
	}
	for _, x := range f.tp.Vectors {
		r := f.rVectors[x.Name]
		if r == nil || (x.Mode == inject.ModeFull && r.Mode != inject.ModeFull) ||
			(r.Mode != inject.ModeFull && !subset(x.Indices, r.Indices)) {
			return fmt.Errorf("the task tunes vector %s (%s), which the adapter-ready model has no slot for%s", x.Name, x.Mode, rebuild)
		}
	}
	if f.tp.Head.Classes > f.info.Classes {
		return fmt.Errorf("the task has %d classes, the adapter-ready model's head %d%s", f.tp.Head.Classes, f.info.Classes, rebuild)
	}
	if f.tp.ClassToken != nil && f.rp.ClassToken == nil {
		return fmt.Errorf("the task tunes the class token, the adapter-ready model does not%s", rebuild)
	}
	for _, e := range f.tp.Extra {
		if !slices.ContainsFunc(f.rp.Extra, func(x inject.TensorPlan) bool { return x.Name == e.Name }) {
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

// taskFloats is a task initializer's values and dims.
func (f *filler) taskFloats(name string) ([]float32, []int64, error) {
	t := f.task.Initializer(name)
	if t == nil {
		return nil, nil, fmt.Errorf("task model has no initializer %s", name)
	}
	v, err := onnxio.Floats(t)
	return v, t.Dims, err
}

// start returns the output buffer for ready initializer name, starting from its
// default (zero for deltas).
func (f *filler) start(name string, zero bool) ([]float32, []int64, error) {
	t := f.ready.Initializer(name)
	if t == nil {
		return nil, nil, fmt.Errorf("adapter-ready model has no initializer %s", name)
	}
	if v, ok := f.out[name]; ok {
		return v, t.Dims, nil
	}
	var v []float32
	if zero {
		v = make([]float32, onnxio.NumElements(t.Dims))
	} else {
		var err error
		if v, err = onnxio.Floats(t); err != nil {
			return nil, nil, err
		}
	}
	f.out[name] = v
	return v, t.Dims, nil
}

func (f *filler) fill(r inject.Injected) error {
	switch r.Role {
	case "sparse_indices":
		return nil // the default (the union's indices) is every task's
	case "lora_A", "lora_B", "adapter_down", "adapter_down_bias", "adapter_up", "adapter_up_bias":
		dst, dims, err := f.start(r.Init, true)
		if err != nil {
			return err
		}
		tl := f.tLayers[r.Of]
		want := map[bool]string{true: inject.ModeLoRA, false: inject.ModeAdapter}[strings.HasPrefix(r.Role, "lora_")]
		if tl == nil || tl.Mode != want {
			return nil // zero: the task does not use this module
		}
		tr, ok := f.tRec[[2]string{r.Of, r.Role}]
		if !ok {
			return fmt.Errorf("the task model does not record its %s of %s", r.Role, r.Of)
		}
		src, sdims, err := f.taskFloats(tr.Init)
		if err != nil {
			return err
		}
		scale := float32(1)
		if s := f.tp.Options.LoRAScaling; r.Role == "lora_B" && s != 0 {
			scale = float32(s)
		}
		return padCopy(dst, dims, src, sdims, scale)
	case "sparse_values":
		dst, _, err := f.start(r.Init, true)
		if err != nil {
			return err
		}
		union, task := f.indices(f.rp, r.Of), f.indices(f.tp, r.Of)
		if len(task) == 0 {
			return nil
		}
		if len(union) != len(dst) {
			return fmt.Errorf("%d values for %d indices", len(dst), len(union))
		}
		tr, ok := f.tRec[[2]string{r.Of, "sparse_values"}]
		if !ok {
			return fmt.Errorf("the task model does not record the sparse values of %s", r.Of)
		}
		src, _, err := f.taskFloats(tr.Init)
		if err != nil {
			return err
		}
		if len(src) != len(task) {
			return fmt.Errorf("task has %d sparse values of %s for %d indices", len(src), r.Of, len(task))
		}
		for k, x := range task {
			i, ok := slices.BinarySearch(union, x)
			if !ok {
				return fmt.Errorf("task index %d of %s is not in the adapter-ready model", x, r.Of)
			}
			dst[i] = src[k]
		}
		return nil
	case "whole":
		return f.fillWhole(r)
	}
	return fmt.Errorf("unknown role %q", r.Role)
}

// indices are a plan's sparse indices of a layer or vector (nil if none).
func (f *filler) indices(p *inject.Plan, of string) []int64 {
	for _, l := range p.Layers {
		if l.Name == of {
			return l.Indices
		}
	}
	for _, v := range p.Vectors {
		if v.Name == of {
			return v.Indices
		}
	}
	return nil
}

// padCopy copies a 1-D or 2-D src into the top-left corner of dst (zero elsewhere),
// multiplied by scale.
func padCopy(dst []float32, dims []int64, src []float32, sdims []int64, scale float32) error {
	if len(dims) != len(sdims) || len(dims) < 1 || len(dims) > 2 {
		return fmt.Errorf("task tensor of shape %v does not fit %v", sdims, dims)
	}
	rows, cols, srows, scols := int64(1), dims[0], int64(1), sdims[0]
	if len(dims) == 2 {
		rows, cols, srows, scols = dims[0], dims[1], sdims[0], sdims[1]
	}
	if srows > rows || scols > cols || int64(len(src)) != srows*scols {
		return fmt.Errorf("task tensor of shape %v does not fit %v", sdims, dims)
	}
	for i := int64(0); i < srows; i++ {
		for j := int64(0); j < scols; j++ {
			dst[i*cols+j] = scale * src[i*scols+j]
		}
	}
	return nil
}

// fillWhole fills the region of a whole-trained ready tensor that r's unit owns.
func (f *filler) fillWhole(r inject.Injected) error {
	if r.Of == "head.weight" || r.Of == "head.bias" {
		return f.fillHead(r)
	}
	dst, dims, err := f.start(r.Init, false)
	if err != nil {
		return err
	}
	tr, tWhole := f.tRec[[2]string{r.Of, "whole"}]
	if x := f.rVectors[r.Of]; x != nil {
		size := x.Size
		if r.Offset+size > len(dst) {
			return fmt.Errorf("vector region [%d:%d] outside %v", r.Offset, r.Offset+size, dims)
		}
		region := dst[r.Offset : r.Offset+size]
		if tWhole {
			src, _, err := f.taskFloats(tr.Init)
			if err != nil {
				return err
			}
			if tr.Offset+size > len(src) {
				return fmt.Errorf("task vector region [%d:%d] outside its %d values", tr.Offset, tr.Offset+size, len(src))
			}
			copy(region, src[tr.Offset:tr.Offset+size])
			return nil
		}
		// Base values (the default) plus the task's sparse delta.
		return f.addSparse(r.Of, func(flat int64) (int, bool) {
			i := int(flat) - x.Offset
			return i, i >= 0 && i < size
		}, region)
	}
	if l := f.rLayers[r.Of]; l != nil {
		at, err := layerIndex(l, dims)
		if err != nil {
			return err
		}
		if tWhole {
			src, sdims, err := f.taskFloats(tr.Init)
			if err != nil {
				return err
			}
			if !slices.Equal(sdims, dims) {
				return fmt.Errorf("task's whole %s is %v, the adapter-ready model's %v", r.Of, sdims, dims)
			}
			for o := 0; o < l.Out; o++ {
				for i := 0; i < l.In; i++ {
					k := at(o, i)
					dst[k] = src[k]
				}
			}
			return nil
		}
		if err := f.addSparse(r.Of, func(flat int64) (int, bool) { return int(flat), flat < int64(len(dst)) }, dst); err != nil {
			return err
		}
		if tl := f.tLayers[r.Of]; tl != nil && tl.Mode == inject.ModeLoRA {
			return f.addLoRA(r.Of, tl, dst, at)
		}
		return nil
	}
	// The class token, embeddings, final norm: whole tensors.
	if !tWhole {
		return nil // the base value (the default)
	}
	src, sdims, err := f.taskFloats(tr.Init)
	if err != nil {
		return err
	}
	if !slices.Equal(sdims, dims) {
		return fmt.Errorf("task's %s is %v, the adapter-ready model's %v", r.Of, sdims, dims)
	}
	copy(dst, src)
	return nil
}

// layerIndex maps (output unit, input) of a plan layer to its flat index in a stored
// weight of dims.
func layerIndex(l *inject.LayerPlan, dims []int64) (func(o, i int) int, error) {
	if len(dims) != 2 {
		return nil, fmt.Errorf("layer %s weight has shape %v", l.Name, dims)
	}
	if l.Layout == surgery.OutIn.String() {
		if dims[1] != int64(l.In) || int64(l.Offset+l.Out) > dims[0] {
			return nil, fmt.Errorf("layer %s does not fit its weight %v", l.Name, dims)
		}
		return func(o, i int) int { return (l.Offset+o)*l.In + i }, nil
	}
	total := int(dims[1])
	if dims[0] != int64(l.In) || l.Offset+l.Out > total {
		return nil, fmt.Errorf("layer %s does not fit its weight %v", l.Name, dims)
	}
	return func(o, i int) int { return i*total + l.Offset + o }, nil
}

// addSparse adds the task's sparse values of unit of to dst at pos(flat index).
func (f *filler) addSparse(of string, pos func(int64) (int, bool), dst []float32) error {
	idx := f.indices(f.tp, of)
	if len(idx) == 0 {
		return nil
	}
	tr, ok := f.tRec[[2]string{of, "sparse_values"}]
	if !ok {
		return fmt.Errorf("the task model does not record the sparse values of %s", of)
	}
	vals, _, err := f.taskFloats(tr.Init)
	if err != nil {
		return err
	}
	if len(vals) != len(idx) {
		return fmt.Errorf("task has %d sparse values of %s for %d indices", len(vals), of, len(idx))
	}
	for k, flat := range idx {
		i, ok := pos(flat)
		if !ok {
			return fmt.Errorf("task index %d of %s outside the tensor", flat, of)
		}
		dst[i] += vals[k]
	}
	return nil
}

// addLoRA folds the task's LoRA (scaling·B·A) into a whole weight.
func (f *filler) addLoRA(of string, tl *inject.LayerPlan, dst []float32, at func(o, i int) int) error {
	ra, ok1 := f.tRec[[2]string{of, "lora_A"}]
	rb, ok2 := f.tRec[[2]string{of, "lora_B"}]
	if !ok1 || !ok2 {
		return fmt.Errorf("the task model does not record the LoRA of %s", of)
	}
	a, ad, err := f.taskFloats(ra.Init)
	if err != nil {
		return err
	}
	b, bd, err := f.taskFloats(rb.Init)
	if err != nil {
		return err
	}
	r := tl.Rank
	if !slices.Equal(ad, []int64{int64(r), int64(tl.In)}) || !slices.Equal(bd, []int64{int64(tl.Out), int64(r)}) {
		return fmt.Errorf("task LoRA of %s has shapes %v, %v", of, ad, bd)
	}
	scale := float32(1)
	if s := f.tp.Options.LoRAScaling; s != 0 {
		scale = float32(s)
	}
	for o := 0; o < tl.Out; o++ {
		for i := 0; i < tl.In; i++ {
			var s float32
			for k := 0; k < r; k++ {
				s += b[o*r+k] * a[k*tl.In+i]
			}
			dst[at(o, i)] += scale * s
		}
	}
	return nil
}

// fillHead copies the task's head into the ready head, padded.
func (f *filler) fillHead(r inject.Injected) error {
	dst, _, err := f.start(r.Init, false)
	if err != nil {
		return err
	}
	info := f.info
	tw, okw := f.tRec[[2]string{"head.weight", "whole"}]
	tb, okb := f.tRec[[2]string{"head.bias", "whole"}]
	if !okw {
		return errors.New("the task model does not record its head weight")
	}
	w, _, err := f.taskFloats(tw.Init)
	if err != nil {
		return err
	}
	c := f.tp.Head.Classes
	b := make([]float32, c)
	if okb {
		if b, _, err = f.taskFloats(tb.Init); err != nil {
			return err
		}
	}
	pw, pb, err := padHead(w, b, info.HeadIn, c, info.Classes, info.HeadLayout)
	if err != nil {
		return fmt.Errorf("task head: %w", err)
	}
	if r.Of == "head.weight" {
		copy(dst, pw)
	} else {
		copy(dst, pb)
	}
	return nil
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
		if in.Of != "head.bias" || in.Role != "whole" {
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
