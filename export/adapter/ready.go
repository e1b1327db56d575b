package adapter

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// KeyReady is the metadata_props key under which an adapter-ready model records its
// ReadyInfo (JSON).
const KeyReady = "sptctl.adapter_ready"

// ReadyVersion is the version of ReadyInfo this package writes and reads.
const ReadyVersion = 2

// PadLogit is the bias of the head's padded classes: a task with fewer classes than
// the ready graph's head gets zero weights and this bias there, so those logits are
// the lowest float32 and never win an argmax or take softmax mass. The task's own
// logits are the first Classes (ReadyInfo.TaskClasses, TaskClasses).
const PadLogit float32 = -math.MaxFloat32

// ReadyInfo describes an adapter-ready model.
type ReadyInfo struct {
	Version         int    `json:"version"`
	BaseFingerprint string `json:"base_fingerprint"`
	Tasks           int    `json:"tasks"`        // how many task plans the graph is the union of
	Classes         int    `json:"classes"`      // the head's outputs: the largest class count
	BaseClasses     int    `json:"base_classes"` // the base model's head outputs (the default head)
	HeadIn          int    `json:"head_in"`
	HeadLayout      string `json:"head_layout"` // "[out,in]" or "[in,out]": how the head weight is stored
	// Inputs are the adapter inputs, in graph-input order.
	Inputs []InputInfo `json:"inputs"`
	Note   string      `json:"note"`
}

// InputInfo is one adapter input of a ready model.
type InputInfo struct {
	Name     string      `json:"name"`
	Of       string      `json:"of"`    // the target it belongs to (plan layer or vector name, head, ...)
	Tuner    inject.Kind `json:"tuner"` // the tuner that made it
	Part     inject.Part `json:"part"`  // which of the tuner's tensors it is
	Dims     []int64     `json:"dims"`
	DataType string      `json:"data_type"` // FLOAT or INT64
}

// Info returns the ReadyInfo an adapter-ready model records, or an error saying the
// model is not one.
func Info(ready *onnxpb.ModelProto) (*ReadyInfo, error) {
	info := &ReadyInfo{}
	ok, err := meta.Get(ready, KeyReady, info)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("not an adapter-ready model (no " + KeyReady + " metadata; make one with `sptctl export --adapters`)")
	}
	if info.Version != ReadyVersion {
		return nil, fmt.Errorf("adapter-ready model version %d is not supported (this sptctl reads version %d); export it again with `sptctl export --adapters`", info.Version, ReadyVersion)
	}
	return info, nil
}

// taskPlan reads the plan inject stored in a task model, with its injected records.
func taskPlan(m *onnxpb.ModelProto, what string) (*inject.Plan, error) {
	s, ok := onnxio.Metadata(m, meta.KeyPlan)
	if !ok {
		return nil, fmt.Errorf("%s has no SPT plan in its metadata (not made by `sptctl inject`)", what)
	}
	p, err := inject.DecodePlan([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(p.Injected) == 0 {
		return nil, fmt.Errorf("%s: its plan lists no injected tensors (not made by `sptctl inject`)", what)
	}
	if fp, ok := onnxio.Metadata(m, meta.KeyBaseFingerprint); ok && fp != p.BaseFingerprint {
		return nil, fmt.Errorf("%s: its plan and its metadata name different base models", what)
	}
	return p, nil
}

// BuildReady makes the adapter-ready model for tasks, each a model made by inject
// from base (and trained, or not): base with the union of the tasks' plans injected,
// every injected tensor a graph input whose default initializer makes the model
// compute base's function:
//
//   - a layer with a LoRA in any task gets one LoRA of the largest rank (A, B default
//     zero; a task of smaller rank fills the first rows of A and columns of B, the
//     rest zero); an Adapter likewise (all four tensors default zero: U = 0, d = 0 is
//     the identity);
//   - sparse deltas (values and indices, both inputs) cover the union of the tasks'
//     index sets per layer or vector, values default zero (a task's values go to its
//     indices, zero elsewhere); a layer trained whole in any task is whole (default
//     base weights; other tasks' LoRA and sparse deltas fold into it exactly);
//   - vectors, the class token and (full strategy) embeddings trained by any task are
//     inputs defaulting to the base values;
//   - the head has max(task classes, base classes) outputs and defaults to the base
//     model's head; smaller heads are padded with zero weights and PadLogit biases.
//
// It fails when tasks were tuned from different bases, or when one task has a LoRA
// and another an Adapter on the same layer (one graph cannot hold both there), or an
// Adapter where another task trains the whole matrix. The inputs are not changed.
func BuildReady(base *onnxpb.ModelProto, tasks []*onnxpb.ModelProto) (*onnxpb.ModelProto, error) {
	if len(tasks) == 0 {
		return nil, errors.New("adapter-ready model: no tasks")
	}
	fp, err := onnxio.Fingerprint(base.GetGraph())
	if err != nil {
		return nil, err
	}
	plans := make([]*inject.Plan, len(tasks))
	for i, t := range tasks {
		p, err := taskPlan(t, fmt.Sprintf("task %d", i+1))
		if err != nil {
			return nil, err
		}
		if p.BaseFingerprint != fp {
			return nil, fmt.Errorf("task %d was tuned from another base model (its base %s, this base %s)", i+1, shortFP(p.BaseFingerprint), shortFP(fp))
		}
		plans[i] = p
	}
	bv, err := surgery.FindViT(surgery.New(base))
	if err != nil {
		return nil, err
	}
	union, err := unionPlan(plans, bv)
	if err != nil {
		return nil, err
	}
	ready := proto.Clone(base).(*onnxpb.ModelProto)
	if err := inject.Apply(ready, union, inject.ApplyOptions{}); err != nil {
		return nil, fmt.Errorf("adapter-ready model: %w", err)
	}
	stored, err := taskPlan(ready, "adapter-ready model")
	if err != nil {
		return nil, err
	}
	g := surgery.New(ready)
	baseHead, err := baseHeadTensors(base, bv, union.Head.Classes)
	if err != nil {
		return nil, err
	}
	info := &ReadyInfo{Version: ReadyVersion, BaseFingerprint: fp, Tasks: len(tasks), Classes: union.Head.Classes,
		BaseClasses: bv.Head.Out, HeadIn: bv.Head.In, HeadLayout: bv.Head.Layout.String(),
		Note: "inputs default to the base model's function; heads of fewer classes are padded (zero weights, bias PadLogit = -FLT_MAX)"}
	seen := map[string]bool{}
	gp := ready.GetGraph()
	for _, r := range stored.Injected {
		t := g.Initializer(r.Init)
		if t == nil {
			return nil, fmt.Errorf("adapter-ready model: injected tensor %s is not an initializer", r.Init)
		}
		if seen[r.Init] {
			continue
		}
		seen[r.Init] = true
		switch {
		case r.Tuner == inject.KindHead:
			if err := onnxio.SetFloats(t, baseHead[r.Part]); err != nil {
				return nil, fmt.Errorf("adapter-ready model: %w", err)
			}
		case isDelta(r.Tuner, r.Part):
			if err := onnxio.SetFloats(t, make([]float32, onnxio.NumElements(t.Dims))); err != nil {
				return nil, fmt.Errorf("adapter-ready model: %w", err)
			}
		}
		gp.Input = append(gp.Input, valueInfo(t))
		info.Inputs = append(info.Inputs, InputInfo{Name: r.Init, Of: r.Of, Tuner: r.Tuner, Part: r.Part, Dims: slices.Clone(t.Dims), DataType: typeName(t.GetDataType())})
	}
	ready.MetadataProps = slices.DeleteFunc(ready.MetadataProps, func(e *onnxpb.StringStringEntryProto) bool {
		return e.GetKey() == meta.KeyTrainable || e.GetKey() == meta.KeyHeadSeed
	})
	onnxio.SetMetadata(ready, meta.KeyClasses, strconv.Itoa(union.Head.Classes))
	if err := meta.Set(ready, KeyReady, info); err != nil {
		return nil, err
	}
	return ready, nil
}

// use is how the tasks train one layer, for the union of their plans.
type use struct {
	modules map[string]string // module mode → a task using it, for errors
	full    string            // a task training the layer whole
}

// kept is a module mode on the layer whose tuner cannot fold into a weight (it keeps
// nodes: an Adapter), or "".
func (u *use) kept() string {
	for _, m := range slices.Sorted(maps.Keys(u.modules)) {
		if t, ok := inject.LayerTuner(m); ok && !t.FoldsIntoWeight() {
			return m
		}
	}
	return ""
}

// isDelta asks the tuner whether its tensor of part p is a delta whose zero is "no
// change"; other tensors keep the value inject gave them, the base's function.
func isDelta(k inject.Kind, p inject.Part) bool {
	t, ok := inject.TunerOf(k)
	return ok && t.Delta(p)
}

func valueInfo(t *onnxpb.TensorProto) *onnxpb.ValueInfoProto {
	dims := make([]*onnxpb.TensorShapeProto_Dimension, len(t.Dims))
	for i, d := range t.Dims {
		dims[i] = &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}}
	}
	return &onnxpb.ValueInfoProto{
		Name: proto.String(t.GetName()),
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
			ElemType: proto.Int32(t.GetDataType()),
			Shape:    &onnxpb.TensorShapeProto{Dim: dims},
		}}},
	}
}

// shortFP is onnxio.ShortFingerprint (task.go calls it by this name).
func shortFP(fp string) string { return onnxio.ShortFingerprint(fp) }

// baseHeadTensors are the base model's head weight and bias padded to classes
// outputs (zero weights, PadLogit biases), in the head weight's stored layout.
func baseHeadTensors(base *onnxpb.ModelProto, v *surgery.ViT, classes int) (map[inject.Part][]float32, error) {
	g := surgery.New(base)
	h := v.Head
	wt := g.Initializer(h.Weight)
	if wt == nil {
		return nil, fmt.Errorf("base head weight %s is not an initializer", h.Weight)
	}
	w, err := onnxio.Floats(wt)
	if err != nil {
		return nil, err
	}
	b := make([]float32, h.Out)
	if h.Bias != "" {
		bt := g.Initializer(h.Bias)
		if bt == nil {
			return nil, fmt.Errorf("base head bias %s is not an initializer", h.Bias)
		}
		if b, err = onnxio.Floats(bt); err != nil {
			return nil, err
		}
	}
	pw, pb, err := inject.PadHead(w, b, h.In, h.Out, classes, h.Layout.String(), PadLogit)
	if err != nil {
		return nil, fmt.Errorf("base head: %w", err)
	}
	return map[inject.Part][]float32{inject.PartWeight: pw, inject.PartBias: pb}, nil
}

// unionPlan is the plan whose injection holds every task's tuned tensors.
func unionPlan(plans []*inject.Plan, v *surgery.ViT) (*inject.Plan, error) {
	p0 := plans[0]
	u := &inject.Plan{Version: inject.PlanVersion, BaseFingerprint: p0.BaseFingerprint, Dim: p0.Dim, Blocks: p0.Blocks,
		Options:  inject.PlanOptions{Strategy: "adapter-union", Type: p0.Options.Type, Alpha: p0.Options.Alpha, Beta: p0.Options.Beta, LoRAScaling: 1},
		Layers:   []inject.LayerPlan{},
		Vectors:  []inject.VectorPlan{},
		Note:     fmt.Sprintf("union of %d task plans for an adapter-ready model", len(plans)),
		Injected: nil}
	classes := v.Head.Out
	layerAt := map[string]int{}
	vecAt := map[string]int{}
	uses := map[string]*use{}
	for ti, p := range plans {
		task := fmt.Sprintf("task %d", ti+1)
		if p.Head.In != v.Head.In {
			return nil, fmt.Errorf("%s: its head has %d inputs, the base model's %d", task, p.Head.In, v.Head.In)
		}
		classes = max(classes, p.Head.Classes)
		for _, l := range p.Layers {
			i, ok := layerAt[l.Name]
			if !ok {
				i = len(u.Layers)
				layerAt[l.Name] = i
				c := l
				c.Mode, c.Rank, c.Indices, c.Sensitive = inject.ModeSparse, 0, nil, 0
				u.Layers = append(u.Layers, c)
				uses[l.Name] = &use{modules: map[string]string{}}
			}
			ul := &u.Layers[i]
			if ul.Weight != l.Weight || ul.In != l.In || ul.Out != l.Out || ul.Offset != l.Offset {
				return nil, fmt.Errorf("%s: layer %s differs from another task's (same base?)", task, l.Name)
			}
			us := uses[l.Name]
			switch {
			case l.Mode == inject.ModeFull:
				us.full = task
			case l.Rank > 0:
				us.modules[l.Mode] = task
				ul.Rank = max(ul.Rank, l.Rank)
			}
			ul.Indices = unionIndices(ul.Indices, l.Indices)
		}
		for _, x := range p.Vectors {
			i, ok := vecAt[x.Name]
			if !ok {
				i = len(u.Vectors)
				vecAt[x.Name] = i
				c := x
				c.Mode, c.Indices, c.Sensitive = inject.ModeSparse, nil, 0
				u.Vectors = append(u.Vectors, c)
			}
			uv := &u.Vectors[i]
			if uv.Init != x.Init || uv.Offset != x.Offset || uv.Size != x.Size {
				return nil, fmt.Errorf("%s: vector %s differs from another task's (same base?)", task, x.Name)
			}
			if x.Mode == inject.ModeFull || uv.Mode == inject.ModeFull {
				uv.Mode, uv.Indices = inject.ModeFull, nil
			} else {
				uv.Indices = unionIndices(uv.Indices, x.Indices)
			}
		}
		if p.ClassToken != nil && u.ClassToken == nil {
			c := *p.ClassToken
			u.ClassToken = &c
		}
		for _, e := range p.Extra {
			if !slices.ContainsFunc(u.Extra, func(x inject.TensorPlan) bool { return x.Name == e.Name }) {
				u.Extra = append(u.Extra, e)
			}
		}
	}
	for i := range u.Layers {
		l := &u.Layers[i]
		us := uses[l.Name]
		modes := slices.SortedFunc(maps.Keys(us.modules), func(a, b string) int { return strings.Compare(us.modules[a], us.modules[b]) })
		switch {
		case len(modes) > 1:
			return nil, fmt.Errorf("layer %s has %s in %s and %s in %s: one adapter-ready graph cannot hold two module types on one layer; tune the tasks with the same --type, or serve them as merged models",
				l.Name, modes[0], us.modules[modes[0]], modes[1], us.modules[modes[1]])
		case us.full != "" && us.kept() != "":
			return nil, fmt.Errorf("layer %s is trained whole in %s and has a %s module in %s: one adapter-ready graph cannot hold both (the module does not fold into a weight)", l.Name, us.full, us.kept(), us.modules[us.kept()])
		case us.full != "":
			l.Mode, l.Rank, l.Indices = inject.ModeFull, 0, nil
			l.Params = int64(l.In) * int64(l.Out)
		case len(modes) == 1:
			l.Mode = modes[0]
			l.Params = inject.ModuleParams(inject.Type(l.Mode), int64(l.Rank), int64(l.In), int64(l.Out)) + int64(len(l.Indices))
		default:
			l.Params = int64(len(l.Indices))
		}
		u.Options.Rank = max(u.Options.Rank, l.Rank)
	}
	// A fused q/k/v weight is trained whole in all three parts or in none.
	for i := range u.Layers {
		l := &u.Layers[i]
		if l.Mode != inject.ModeFull || !l.Fused {
			continue
		}
		for j := range u.Layers {
			o := &u.Layers[j]
			if o.Weight == l.Weight && o.Mode != inject.ModeFull {
				if m := uses[o.Name].kept(); m != "" {
					return nil, fmt.Errorf("layer %s has a %s module while the fused weight it shares is trained whole (the module does not fold into a weight)", o.Name, m)
				}
				o.Mode, o.Rank, o.Indices = inject.ModeFull, 0, nil
				o.Params = int64(o.In) * int64(o.Out)
			}
		}
	}
	for i := range u.Vectors {
		x := &u.Vectors[i]
		if x.Mode == inject.ModeFull {
			x.Params = int64(x.Size)
		} else {
			x.Params = int64(len(x.Indices))
		}
	}
	u.Head = inject.HeadPlan{In: v.Head.In, Classes: classes, Params: int64(v.Head.In+1) * int64(classes), Weight: v.Head.Weight, Bias: v.Head.Bias}
	u.Options.Classes = classes
	u.Recount()
	u.Budget = u.Totals.Total
	u.Recount()
	return u, nil
}

// unionIndices merges two ascending index lists.
func unionIndices(a, b []int64) []int64 {
	if len(b) == 0 {
		return a
	}
	out := make([]int64, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	return out
}

// MarshalInfo is ReadyInfo as indented JSON (for manifests).
func (r *ReadyInfo) MarshalIndent() ([]byte, error) { return json.MarshalIndent(r, "", " ") }
