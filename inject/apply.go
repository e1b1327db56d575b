package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// ApplyOptions control Apply.
type ApplyOptions struct {
	// Classes is the task's class count; 0 means the plan's. It must equal the plan's
	// (the plan's total counts the head).
	Classes int
	// KeepHead trains the model's own head instead of a new one; the plan must have
	// been made for the model's head size.
	KeepHead bool
	// Seed seeds the LoRA A and Adapter down-projection initializations. The new head
	// starts from the plan's head values when it has them (the head sensitivity
	// fitted and scored through), else HeadInit(in, classes, plan.Head.Seed): either
	// way the head sensitivity ran with.
	Seed int64
	// Dropout is the ratio of a Dropout node on each branch input (0: none). ONNX
	// Dropout is the identity at inference; the trainer applies it.
	Dropout float32
	// BasePath, if set, is recorded as meta.KeyBasePath: where export finds the base
	// model by default (give an absolute path).
	BasePath string
}

// Names of the things Apply adds. Every new initializer and node is named
// "spt/<layer or vector name>/<part>", e.g. spt/blocks.3.fc1/lora_A.
const Prefix = "spt/"

// Apply rewrites m, the base model p was made for, into the tunable model: each plan
// entry's tuner rewrites the graph for it (see the tuner_*.go files for what each
// method injects):
//
//   - the class token and the head first (a new head for the plan's classes, or with
//     KeepHead the model's own, trained);
//   - then every block matrix in plan order: its module (LoRA, Adapter, …: branches on
//     the layer's output are summed once all are built) or, for mode full, the weight
//     trained whole;
//   - then the sparse deltas of matrices (a layer's own, or extra entries beside its
//     module), then rewrites that need the final weight (Builder.Later);
//   - then the block vectors, grouped by where they are read (a fused bias's three
//     parts together), and the non-block tensors of the full strategy.
//
// An initializer that other nodes also read (a de-duplicated tensor behind Identity
// aliases) is copied for the use that is trained. An optional Dropout node (shared per
// input value) sits on every branch input.
//
// The trainable initializers (their sizes add up to the plan's total exactly; see
// TrainableCount), the plan with the records of what each tuner made, the base
// fingerprint, the class count and the head seed are stored in the model's metadata
// (internal/meta keys), and the nodes are sorted topologically. All checks (plan for
// this model, sizes, indices, options) run before the model is changed: on such an
// error m is untouched.
func Apply(m *onnxpb.ModelProto, p *Plan, opt ApplyOptions) error {
	// A model the trainer cannot run would only fail at train time: refuse it here,
	// before anything is written, as inspect and allocate do.
	if err := engine.CheckOps(m.GetGraph()); err != nil {
		return err
	}
	in, err := check(m, p, opt)
	if err != nil {
		return err
	}
	g, classes := in.g, p.Head.Classes
	if err := in.run(); err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	if err := meta.Set(m, meta.KeyTrainable, in.order); err != nil {
		return err
	}
	stored := *p
	stored.Injected = in.records
	pj, err := json.Marshal(&stored)
	if err != nil {
		return err
	}
	onnxio.SetMetadata(m, meta.KeyPlan, string(pj))
	onnxio.SetMetadata(m, meta.KeyBaseFingerprint, p.BaseFingerprint)
	if err := meta.Set(m, meta.KeyClasses, classes); err != nil {
		return err
	}
	if err := meta.Set(m, meta.KeyHeadSeed, p.Head.Seed); err != nil {
		return err
	}
	if opt.BasePath != "" {
		onnxio.SetMetadata(m, meta.KeyBasePath, opt.BasePath)
	}
	g.RemoveDeadNodes()
	if err := g.TopoSort(); err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	return nil
}

// TrainableCount is the number of trainable parameters of an injected model: the sum
// of the sizes of the initializers its metadata marks trainable.
func TrainableCount(m *onnxpb.ModelProto) (int64, error) {
	names, err := meta.Trainable(m)
	if err != nil {
		return 0, err
	}
	if names == nil {
		return 0, errors.New("model has no trainable-parameter list (not injected)")
	}
	inits := map[string]*onnxpb.TensorProto{}
	for _, t := range m.GetGraph().GetInitializer() {
		inits[t.GetName()] = t
	}
	seen := map[string]bool{}
	var n int64
	for _, name := range names {
		t := inits[name]
		if t == nil {
			return 0, fmt.Errorf("trainable initializer %q is not in the model", name)
		}
		if seen[name] {
			return 0, fmt.Errorf("trainable initializer %q is listed twice", name)
		}
		seen[name] = true
		n += onnxio.NumElements(t.Dims)
	}
	return n, nil
}

// HeadInit makes a classifier head for classes classes on in features: the weight
// [classes, in] (row-major) drawn from a normal distribution with std 0.02 truncated
// at ±2 std, the bias zero. The same seed gives the same head (sensitivity uses it
// for the head it computes scores with, so that Apply's head is that head).
func HeadInit(in, classes int, seed int64) (weight, bias []float32) {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5350545f68656164)) // "SPT_head"
	weight = make([]float32, in*classes)
	for i := range weight {
		z := rng.NormFloat64()
		for z < -2 || z > 2 {
			z = rng.NormFloat64()
		}
		weight[i] = float32(0.02 * z)
	}
	return weight, make([]float32, classes)
}

// checkPlan checks the plan against the model (after findSites).
func (b *Builder) checkPlan() error {
	g, v, p := b.g, b.v, b.p
	seen := map[string]bool{}
	for i := range p.Layers {
		l := &p.Layers[i]
		u := b.units[l.Name]
		if u == nil || !u.matrix {
			return fmt.Errorf("plan layer %s is not in this model", l.Name)
		}
		if seen[l.Name] {
			return fmt.Errorf("plan lists layer %s twice", l.Name)
		}
		seen[l.Name] = true
		if u.init != l.Weight || int(u.in) != l.In || int(u.out) != l.Out || u.lin.Offset != l.Offset {
			return fmt.Errorf("plan layer %s (%s %dx%d at %d) does not match the model (%s %dx%d at %d)", l.Name, l.Weight, l.In, l.Out, l.Offset, u.init, u.in, u.out, u.lin.Offset)
		}
		if err := checkIndices(u, l.Indices); err != nil {
			return fmt.Errorf("plan layer %s: %w", l.Name, err)
		}
		b.layers = append(b.layers, l)
	}
	// A fused weight trained whole must be trained whole in all its parts.
	fullParts := map[string]int{}
	for _, l := range b.layers {
		if l.Mode == ModeFull {
			fullParts[l.Weight]++
		}
	}
	for _, l := range b.layers {
		if l.Mode == ModeFull && l.Fused && fullParts[l.Weight] != 3 {
			return fmt.Errorf("plan layer %s: a fused q/k/v weight can only be trained whole in all three parts", l.Name)
		}
	}
	b.vectors = map[string]*VectorPlan{}
	for i := range p.Vectors {
		vp := &p.Vectors[i]
		u := b.units[vp.Name]
		if u == nil || u.matrix {
			return fmt.Errorf("plan vector %s is not in this model", vp.Name)
		}
		if b.vectors[vp.Name] != nil {
			return fmt.Errorf("plan lists vector %s twice", vp.Name)
		}
		if u.init != vp.Init || u.vec.Offset != vp.Offset || u.vec.Size != vp.Size {
			return fmt.Errorf("plan vector %s (%s [%d:%d]) does not match the model (%s [%d:%d])", vp.Name, vp.Init, vp.Offset, vp.Offset+vp.Size, u.init, u.vec.Offset, u.vec.Offset+u.vec.Size)
		}
		if err := checkIndices(u, vp.Indices); err != nil {
			return fmt.Errorf("plan vector %s: %w", vp.Name, err)
		}
		b.vectors[vp.Name] = vp
	}
	if p.ClassToken != nil {
		t := g.Initializer(v.ClassToken)
		if v.ClassToken != p.ClassToken.Init || t == nil || onnxio.NumElements(t.Dims) != p.ClassToken.Params {
			return fmt.Errorf("plan class token %s (%d) does not match the model's %q", p.ClassToken.Init, p.ClassToken.Params, v.ClassToken)
		}
		if _, err := b.extraSlot(*p.ClassToken); err != nil {
			return err
		}
	}
	for _, e := range p.Extra {
		t := g.Initializer(e.Init)
		if t == nil || onnxio.NumElements(t.Dims) != e.Params {
			return fmt.Errorf("plan tensor %s (%s, %d) is not in this model", e.Name, e.Init, e.Params)
		}
		if _, err := b.extraSlot(e); err != nil {
			return err
		}
	}
	if _, err := weightSlot(v.Head); err != nil {
		return err
	}
	if v.Head.Bias != "" {
		if _, err := biasSlot(v.Head); err != nil {
			return err
		}
	}
	return nil
}

func checkIndices(u *unit, idx []int64) error {
	for _, f := range idx {
		if u.sp.local(f) < 0 {
			return fmt.Errorf("index %d is outside its entries of %s", f, u.init)
		}
	}
	return nil
}

// run does the rewrite: each plan entry's tuner, in the order Apply describes.
func (b *Builder) run() error {
	p := b.p
	inject := func(k Kind, t Target) error {
		tu, ok := TunerOf(k)
		if !ok {
			return fmt.Errorf("%s: no tuner %q", t.Name(), k)
		}
		return tu.Inject(b, t)
	}
	if p.ClassToken != nil {
		if err := inject(KindWhole, Target{Tensor: p.ClassToken}); err != nil {
			return err
		}
	}
	if err := inject(KindHead, Target{Head: &p.Head}); err != nil {
		return err
	}
	for _, l := range b.layers {
		if l.Mode == ModeSparse {
			continue
		}
		if err := inject(layerKind(l.Mode), Target{Layer: l}); err != nil {
			return err
		}
	}
	b.sumBranches()
	for _, l := range b.layers {
		if len(l.Indices) > 0 {
			if err := inject(KindSparse, Target{Layer: l}); err != nil {
				return err
			}
		}
	}
	flushSparse(b)
	for _, f := range b.later {
		if err := f(); err != nil {
			return err
		}
	}
	if err := b.vectorsRewrite(); err != nil {
		return err
	}
	for i := range p.Extra {
		if err := inject(KindWhole, Target{Tensor: &p.Extra[i]}); err != nil {
			return err
		}
	}
	return nil
}

// vectorsRewrite trains the planned vectors, grouped by where they are read (the
// three parts of a fused bias are read together).
func (b *Builder) vectorsRewrite() error {
	type group struct {
		s     slot
		units []*unit
	}
	var groups []*group
	bySlot := map[slot]*group{}
	for i := range b.all {
		u := &b.all[i]
		if u.matrix {
			continue
		}
		s := b.vecSlot[u.name]
		gr := bySlot[s]
		if gr == nil {
			gr = &group{s: s}
			bySlot[s] = gr
			groups = append(groups, gr)
		}
		gr.units = append(gr.units, u)
	}
	for _, gr := range groups {
		var planned []*VectorPlan
		full := 0
		for _, u := range gr.units {
			if vp := b.vectors[u.name]; vp != nil {
				planned = append(planned, vp)
				if vp.Mode == ModeFull {
					full++
				}
			}
		}
		if len(planned) == 0 {
			continue
		}
		u0 := gr.units[0]
		size := onnxio.NumElements(u0.dims)
		slices.SortFunc(gr.units, func(a, b *unit) int { return a.vec.Offset - b.vec.Offset })
		covered := int64(0)
		for _, u := range gr.units {
			if int64(u.vec.Offset) != covered {
				covered = -1
				break
			}
			covered += int64(u.vec.Size)
		}
		gname := u0.name
		if len(gr.units) > 1 {
			gname = fmt.Sprintf("blocks.%d.qkv.bias", u0.block)
		}
		switch {
		case full == len(gr.units) && covered == size:
			var of []string
			var offs []int
			for _, u := range gr.units {
				of, offs = append(of, u.name), append(offs, u.vec.Offset)
			}
			if _, err := b.trainWhole(gr.s, Prefix+gname, of, offs, KindWhole, PartWhole); err != nil {
				return err
			}
		case full == 0:
			var parts []sparsePart
			for _, vp := range planned {
				parts = append(parts, sparsePart{name: vp.Name, flat: vp.Indices, base: vp.Init})
			}
			b.g.SetInput(gr.s.node, gr.s.idx, sparseDelta(b, gr.s.value(), gname, u0.dims, parts))
		default: // split into per-part initializers joined by a Concat
			if covered != size || len(u0.dims) != 1 {
				return fmt.Errorf("vector %s: cannot train part of initializer %s whole", planned[0].Name, u0.init)
			}
			src := b.g.Initializer(u0.init)
			all, err := onnxio.Floats(src)
			if err != nil {
				return err
			}
			var pieces []string
			for _, u := range gr.units {
				vals := slices.Clone(all[u.vec.Offset : u.vec.Offset+u.vec.Size])
				vp := b.vectors[u.name]
				piece := b.addFloat(Prefix+u.name, []int64{int64(u.vec.Size)}, vals, vp != nil && vp.Mode == ModeFull)
				if vp != nil && vp.Mode == ModeFull {
					b.record(piece, u.name, KindWhole, PartWhole, u.init, 0, true)
				}
				if vp != nil && vp.Mode == ModeSparse {
					local := make([]int64, len(vp.Indices))
					for i, f := range vp.Indices {
						local[i] = f - int64(u.vec.Offset)
					}
					// The record's indices are into the piece; say so by naming it as the base.
					piece = sparseDelta(b, piece, u.name, []int64{int64(u.vec.Size)}, []sparsePart{{name: u.name, flat: local, base: piece}})
				}
				pieces = append(pieces, piece)
			}
			b.g.SetInput(gr.s.node, gr.s.idx, b.node("Concat", Prefix+gname+"/concat", pieces, surgery.IntAttr("axis", 0)))
		}
	}
	return nil
}
