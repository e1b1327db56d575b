package main

import (
	"fmt"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
)

// The export's parity check also runs the trained model on libtorch (the executor
// that trained it), so ONNX Runtime and the training engine must agree with the export.
func init() {
	registerParityChecker("libtorch executor", runOnLibtorch)
}

// runOnLibtorch runs a model's first output in eval mode on the training executor,
// with the given libtorch threads.
func runOnLibtorch(modelPath string, x ort.Tensor, threads int) (ort.Tensor, error) {
	m, err := onnxio.Load(modelPath)
	if err != nil {
		return ort.Tensor{}, err
	}
	names, err := meta.Trainable(m)
	if err != nil {
		return ort.Tensor{}, err
	}
	if len(x.Shape) == 0 || x.Shape[0] <= 0 {
		return ort.Tensor{}, fmt.Errorf("libtorch check: input shape %v", x.Shape)
	}
	n := int(x.Shape[0])
	w := torch.NewWorkerThreads(threads)
	defer w.Close()
	var out ort.Tensor
	err = w.Do(func() error {
		p, err := w.Compile(m, engine.Options{Trainable: names})
		if err != nil {
			return err
		}
		defer p.Close()
		res, err := p.Forward(x.Data, nil, n)
		if err != nil {
			return err
		}
		out = ort.Tensor{Shape: []int64{int64(n), int64(res.Classes)}, Data: res.Logits}
		return nil
	})
	return out, err
}
