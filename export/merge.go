package export

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// ErrNotInjected is returned for a model without sptctl's plan metadata.
var ErrNotInjected = errors.New("not made by `sptctl inject` (no " + meta.KeyPlan + " metadata)")

// Plan returns the plan an injected model stores in its metadata (with its list of
// injected tensors), or ErrNotInjected.
func Plan(m *onnxpb.ModelProto) (*inject.Plan, error) {
	s, ok := onnxio.Metadata(m, meta.KeyPlan)
	if !ok {
		return nil, ErrNotInjected
	}
	p, err := inject.DecodePlan([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("metadata %s: %w", meta.KeyPlan, err)
	}
	if len(p.Injected) == 0 {
		return nil, fmt.Errorf("metadata %s: the plan lists no injected tensors (a plan.json, not an injected model's copy)", meta.KeyPlan)
	}
	return p, nil
}

// CheckBase refuses a base model that is not the one m was injected from.
func CheckBase(p *inject.Plan, base *onnxpb.ModelProto) error {
	fp, err := onnxio.Fingerprint(base.GetGraph())
	if err != nil {
		return err
	}
	if fp != p.BaseFingerprint {
		return fmt.Errorf("the base model is not the one the model was injected from (its fingerprint is %s, the plan's %s)", onnxio.ShortFingerprint(fp), onnxio.ShortFingerprint(p.BaseFingerprint))
	}
	return nil
}

// DropFrozen drops from m, an injected model, the data of every initializer its plan
// does not list as injected (the frozen base weights: Merge reads those from the base
// model) and gives the listed ones their own copy of their data, so that the file
// buffer a loaded model's initializers share can be freed. m keeps its graph, its
// metadata and every tensor Merge reads from it; it can no longer be run or saved.
func DropFrozen(m *onnxpb.ModelProto) error {
	p, err := Plan(m)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, in := range p.Injected {
		keep[in.Init] = true
	}
	for _, t := range m.GetGraph().GetInitializer() {
		if keep[t.GetName()] {
			t.RawData = slices.Clone(t.RawData)
			continue
		}
		onnxio.DropTensorData(t)
	}
	return nil
}

// MergeReport says what Merge folded and what it kept.
type MergeReport struct {
	// Folded lists the modules folded into the weights, per tuner ("lora": the layers
	// whose LoRA was added to the weight, …), the head and whole tensors included.
	Folded        map[inject.Kind][]string `json:"folded"`
	SparseEntries int64                    `json:"sparse_entries"` // sparse deltas folded (matrices and vectors)
	Changed       []string                 `json:"changed"`        // base initializers given new values (the head included)
	Added         []string                 `json:"added"`          // initializers added where a de-duplicated base tensor had to be split
	Adapters      []string                 `json:"adapters"`       // layers whose module stays as nodes (an Adapter's GELU cannot fold)
	Head          string                   `json:"head"`           // what happened to the head
	Nodes         int                      `json:"nodes"`          // nodes of the merged graph
	BaseNodes     int                      `json:"base_nodes"`     // nodes of the base graph
}

// String describes the merge in a few lines.
func (r *MergeReport) String() string {
	var b strings.Builder
	var folded []string
	for _, k := range slices.Sorted(maps.Keys(r.Folded)) {
		if k == inject.KindSparse || k == inject.KindWhole || k == inject.KindHead {
			continue
		}
		folded = append(folded, fmt.Sprintf("%d %s modules", len(r.Folded[k]), k))
	}
	folded = append(folded, fmt.Sprintf("%d sparse entries", r.SparseEntries))
	fmt.Fprintf(&b, "folded %s; %d base tensors changed, %d added; %s\n",
		strings.Join(folded, ", "), len(r.Changed), len(r.Added), r.Head)
	if len(r.Adapters) > 0 {
		fmt.Fprintf(&b, "%d modules cannot fold into the weights (an Adapter contains a GELU) and stay as nodes: %s\n",
			len(r.Adapters), strings.Join(r.Adapters, ", "))
	}
	fmt.Fprintf(&b, "graph: %d nodes (base: %d)\n", r.Nodes, r.BaseNodes)
	return b.String()
}

// Merge turns m, a trained model written by inject (and train), into the base model
// with the task's weights. It starts from a copy of base (the model m was injected
// from: its fingerprint must match the plan's) and asks each module the plan records,
// in record order, to fold its trained tensors into that copy (inject.Tuner.Fold):
// LoRA adds scaling·B·A to its weight, sparse deltas their values, whole tensors and
// the head replace the base's; a module that cannot fold (an Adapter: GELU) puts its
// nodes, with the trained tensors, on its layer's output, and the report lists it. So
// for plans without such modules the merged graph has exactly the base graph's nodes,
// in the same order (the head's shape aside). A tensor that the base de-duplicated
// (one initializer behind Identity aliases) but that the task changed for only some of
// its users becomes a new initializer for those. sptctl's injection metadata is
// dropped (the preprocessing stays; meta.KeyMerged records the merge).
//
// m is changed only if Merge succeeds; base is not changed.
func Merge(m, base *onnxpb.ModelProto) (*MergeReport, error) {
	return merge(m, base, true)
}

// MergeInto is Merge without the copy of base: it folds the task into base itself and
// moves base's graph into m, so that a caller that loaded the base only to merge does
// not hold it twice (346 MB for vit_b_16). base must not be used afterwards, whether
// MergeInto succeeds or not; m is changed only if it succeeds.
func MergeInto(m, base *onnxpb.ModelProto) (*MergeReport, error) {
	return merge(m, base, false)
}

func merge(m, base *onnxpb.ModelProto, clone bool) (*MergeReport, error) {
	p, err := Plan(m)
	if err != nil {
		return nil, err
	}
	if err := CheckBase(p, base); err != nil {
		return nil, err
	}
	mods, err := p.Modules()
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	baseNodes := len(base.GetGraph().GetNode())
	merged := base
	if clone {
		merged = proto.Clone(base).(*onnxpb.ModelProto)
	}
	w, err := inject.MergeWeights(merged, m, p)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	rep := &MergeReport{Folded: map[inject.Kind][]string{}}
	// Each base tensor is written as soon as the last module that changes it is
	// folded, so that the decoded tensors are not all held at once.
	last := map[string]int{}
	for i, mod := range mods {
		if src := w.Source(mod.Target); src != "" {
			last[src] = i
		}
	}
	for i, mod := range mods {
		tu, _ := inject.TunerOf(mod.Tuner)
		if err := tu.Fold(w, mod); err != nil {
			return nil, fmt.Errorf("merge: %s of %s: %w", mod.Tuner, mod.Target.Name(), err)
		}
		if !slices.Contains(w.Kept, mod.Target.Name()) {
			rep.Folded[mod.Tuner] = append(rep.Folded[mod.Tuner], mod.Target.Name())
		}
		if src := w.Source(mod.Target); src != "" && last[src] == i {
			if err := w.Flush(src); err != nil {
				return nil, fmt.Errorf("merge: %s: %w", src, err)
			}
		}
	}
	if err := w.Finish(); err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	rep.Changed, rep.Added, rep.Adapters = w.Changed, w.Added, w.Kept
	for _, l := range p.Layers {
		rep.SparseEntries += int64(len(l.Indices))
	}
	for _, v := range p.Vectors {
		rep.SparseEntries += int64(len(v.Indices))
	}
	rep.Head = fmt.Sprintf("the base's head, trained (%d classes)", p.Head.Classes)
	if mod, ok := p.Module(inject.HeadName, inject.KindHead); ok {
		if r, ok := mod.Tensor(inject.PartWeight); ok && r.Base == "" {
			rep.Head = fmt.Sprintf("new head for %d classes in place of the base's", p.Head.Classes)
		}
	}
	finish(m, merged, p, rep)
	rep.BaseNodes = baseNodes
	if !clone {
		base.Graph = nil // moved into m
	}
	return rep, nil
}

// finish puts the merged graph into m and replaces the injection metadata with a note.
func finish(m, merged *onnxpb.ModelProto, p *inject.Plan, rep *MergeReport) {
	m.Graph = merged.Graph
	note := meta.MergedNote{BaseFingerprint: p.BaseFingerprint, Plan: p.Summary(), Adapters: rep.Adapters,
		Note: "merged by sptctl export: LoRA, sparse deltas, tuned vectors and the head are folded into the base weights"}
	if len(rep.Adapters) > 0 {
		note.Note += "; Adapters cannot fold (GELU) and stay as nodes"
	}
	drop := map[string]bool{meta.KeyTrainable: true, meta.KeyPlan: true, meta.KeyBaseFingerprint: true,
		meta.KeyHeadSeed: true, meta.KeyBasePath: true}
	m.MetadataProps = slices.DeleteFunc(m.MetadataProps, func(e *onnxpb.StringStringEntryProto) bool { return drop[e.GetKey()] })
	_ = meta.Set(m, meta.KeyMerged, note)
	rep.Nodes = len(merged.Graph.GetNode())
}
