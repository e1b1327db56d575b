package inject

import (
	"fmt"
	"slices"
)

// wholeTuner trains a tensor in place: a block matrix (mode full; a fused q/k/v
// weight only in all three parts), a block vector (see vectorsRewrite for a fused bias
// trained in part), the class token, or (full strategy) the embeddings and final norm.
// An initializer that other nodes also read is first copied for this use. It folds by
// replacing the base values with the trained ones.
type wholeTuner struct{}

func (wholeTuner) Kind() Kind { return KindWhole }

func (wholeTuner) Delta(Part) bool { return false }

func (wholeTuner) FoldsIntoWeight() bool { return true }

func (wholeTuner) Params(t Target) int64 {
	switch {
	case t.Layer != nil:
		return int64(t.Layer.In) * int64(t.Layer.Out)
	case t.Vector != nil:
		return int64(t.Vector.Size)
	case t.Tensor != nil:
		return t.Tensor.Params
	}
	return 0
}

func (wholeTuner) Inject(b *Builder, t Target) error {
	switch {
	case t.Layer != nil:
		l := t.Layer
		st, _ := b.state[KindWhole].(map[string]bool)
		if st == nil {
			st = map[string]bool{}
			b.state[KindWhole] = st
		}
		if st[l.Weight] {
			return nil // the fused weight is trained already
		}
		st[l.Weight] = true
		name, of, offs := l.Name, []string{l.Name}, []int{0}
		if l.Fused {
			name = fmt.Sprintf("blocks.%d.qkv", l.Block)
			of, offs = nil, nil
			for _, x := range b.layers {
				if x.Weight == l.Weight {
					of, offs = append(of, x.Name), append(offs, x.Offset)
				}
			}
		}
		_, err := b.trainWhole(b.weightSlot[l.Name], Prefix+name+"/weight", of, offs, KindWhole, PartWhole)
		return err
	case t.Tensor != nil:
		s, err := b.extraSlot(*t.Tensor)
		if err != nil {
			return err
		}
		_, err = b.trainWhole(s, Prefix+t.Tensor.Name, []string{t.Tensor.Name}, []int{0}, KindWhole, PartWhole)
		return err
	}
	return fmt.Errorf("%s: whole vectors are built with their site", t.Name())
}

func (wholeTuner) Fold(w *Weights, m Module) error {
	r, ok := m.Tensor(PartWhole)
	if !ok {
		return fmt.Errorf("%s: no whole tensor recorded", m.Target.Name())
	}
	src, dims, err := w.Trained(r.Init)
	if err != nil {
		return err
	}
	switch t := m.Target; {
	case t.Layer != nil:
		from, err := MatrixOf(t.Layer, src, dims)
		if err != nil {
			return err
		}
		to, err := w.Layer(t.Layer)
		if err != nil {
			return err
		}
		copyMatrix(to, from)
	case t.Vector != nil:
		to, err := w.Vector(t.Vector)
		if err != nil {
			return err
		}
		if r.Offset+len(to) > len(src) {
			return fmt.Errorf("%s: trained region [%d:%d] outside %s", t.Name(), r.Offset, r.Offset+len(to), r.Init)
		}
		copy(to, src[r.Offset:r.Offset+len(to)])
	case t.Tensor != nil:
		to, tdims, err := w.Tensor(t.Tensor)
		if err != nil {
			return err
		}
		if !slices.Equal(tdims, dims) {
			return fmt.Errorf("%s: trained %v, base %v", t.Name(), dims, tdims)
		}
		copy(to, src)
	}
	return nil
}

func copyMatrix(to, from Matrix) {
	for o := 0; o < to.Out; o++ {
		for i := 0; i < to.In; i++ {
			to.Data[to.At(o, i)] = from.Data[from.At(o, i)]
		}
	}
}

// Fill gives the ready tensor the task's values: the task's own whole tensor, or the
// base values (the default) with the task's other modules on the target folded in
// (sparse deltas, LoRA, …: they fold exactly).
func (wholeTuner) Fill(f *Fill, m Module) error {
	r, ok := m.Tensor(PartWhole)
	if !ok {
		return fmt.Errorf("%s: no whole tensor recorded", m.Target.Name())
	}
	dst, dims, err := f.Out(r.Init, false)
	if err != nil {
		return err
	}
	name := m.Target.Name()
	tw := &Weights{Plan: f.Task, trained: f.TaskFloats}
	switch t := m.Target; {
	case t.Layer != nil:
		to, err := MatrixOf(t.Layer, dst, dims)
		if err != nil {
			return err
		}
		tw.layer = func(*LayerPlan) (Matrix, error) { return to, nil }
	case t.Vector != nil:
		if r.Offset+t.Vector.Size > len(dst) {
			return fmt.Errorf("vector region [%d:%d] outside %v", r.Offset, r.Offset+t.Vector.Size, dims)
		}
		region := dst[r.Offset : r.Offset+t.Vector.Size]
		tw.vector = func(*VectorPlan) ([]float32, error) { return region, nil }
	case t.Tensor != nil:
		tw.tensor = func(*TensorPlan) ([]float32, []int64, error) { return dst, dims, nil }
	}
	mods, err := f.Task.Modules()
	if err != nil {
		return err
	}
	for _, tm := range mods {
		if tm.Target.Name() != name {
			continue
		}
		tu, _ := TunerOf(tm.Tuner)
		if err := tu.Fold(tw, tm); err != nil {
			return fmt.Errorf("task's %s of %s: %w", tm.Tuner, name, err)
		}
	}
	return nil
}
