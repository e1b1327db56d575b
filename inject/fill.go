package inject

import (
	"fmt"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// Fill is what tuners write one task's adapter from: an adapter-ready model (the union
// of the tasks' plans injected into the base, Ready its plan) and one task's tuned
// model (Task its plan). Each tuner's Fill writes the task's values for its module of
// the ready model; Values has them.
type Fill struct {
	Ready, Task *Plan
	// HeadLayout is the ready head weight's layout ("[out,in]" or "[in,out]"), and
	// PadLogit the bias of head classes a task does not have.
	HeadLayout string
	PadLogit   float32

	ready, task *surgery.Graph
	out         map[string][]float32
}

// NewFill starts filling ready's tensors for task.
func NewFill(ready, task *onnxpb.ModelProto, rp, tp *Plan) *Fill {
	return &Fill{Ready: rp, Task: tp, ready: surgery.New(ready), task: surgery.New(task), out: map[string][]float32{}}
}

// Values are the ready tensors written so far, by name.
func (f *Fill) Values() map[string][]float32 { return f.out }

// Out is the buffer of ready tensor name, starting from zero (a delta) or its
// default value.
func (f *Fill) Out(name string, zero bool) ([]float32, []int64, error) {
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

// TaskFloats is a task tensor's values and dims.
func (f *Fill) TaskFloats(name string) ([]float32, []int64, error) {
	t := f.task.Initializer(name)
	if t == nil {
		return nil, nil, fmt.Errorf("task model has no initializer %s", name)
	}
	v, err := onnxio.Floats(t)
	return v, t.Dims, err
}

// ReadyFloats is a ready tensor's default values and dims (the base's weights where
// the ready model reads them unchanged).
func (f *Fill) ReadyFloats(name string) ([]float32, []int64, error) {
	t := f.ready.Initializer(name)
	if t == nil {
		return nil, nil, fmt.Errorf("adapter-ready model has no initializer %s", name)
	}
	v, err := onnxio.Floats(t)
	return v, t.Dims, err
}

// padParts fills each tensor of module m from the task's module of the same tuner on
// the same target, copied into the top-left corner (a task of smaller rank) and
// multiplied by scale[part] (1 if absent); zero where the task has no such module.
func (f *Fill) padParts(m Module, scale map[Part]float32) error {
	tm, has := f.Task.Module(m.Target.Name(), m.Tuner)
	for _, r := range m.Tensors {
		dst, dims, err := f.Out(r.Init, true)
		if err != nil {
			return err
		}
		if !has {
			continue
		}
		name, err := tm.Init(r.Part)
		if err != nil {
			return err
		}
		src, sdims, err := f.TaskFloats(name)
		if err != nil {
			return err
		}
		s, ok := scale[r.Part]
		if !ok {
			s = 1
		}
		if err := padCopy(dst, dims, src, sdims, s); err != nil {
			return fmt.Errorf("%s %s of %s: %w", m.Tuner, r.Part, m.Target.Name(), err)
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
