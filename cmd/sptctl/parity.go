package main

import (
	"fmt"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/osmem"
	"github.com/sptctl/sptctl/onnxio"
)

// The export's parity check also runs the trained model on libtorch (the executor
// that trained it), so ONNX Runtime and the training engine must agree with the export.
func init() {
	registerParityChecker("libtorch executor", runOnLibtorch)
}

// runOnLibtorch runs a model's first output in eval mode on the training executor, on
// every batch of xs with one compiled program and the given libtorch threads. Once the
// program holds the weights the loaded model's bytes are given up, so that the check
// holds one copy of the weights, not two.
func runOnLibtorch(modelPath string, xs []ort.Tensor, threads int) ([]ort.Tensor, error) {
	m, err := onnxio.Load(modelPath)
	if err != nil {
		return nil, err
	}
	names, err := meta.Trainable(m)
	if err != nil {
		return nil, err
	}
	w := torch.NewWorkerThreads(threads)
	defer w.Close()
	outs := make([]ort.Tensor, len(xs))
	err = w.Do(func() error {
		p, err := w.Compile(m, engine.Options{Trainable: names})
		if err != nil {
			return err
		}
		defer p.Close()
		m = nil
		osmem.Release()
		for i, x := range xs {
			if len(x.Shape) == 0 || x.Shape[0] <= 0 {
				return fmt.Errorf("libtorch check: input shape %v", x.Shape)
			}
			n := int(x.Shape[0])
			res, err := p.Forward(x.Data, nil, n)
			if err != nil {
				return err
			}
			outs[i] = ort.Tensor{Shape: []int64{int64(n), int64(res.Classes)}, Data: res.Logits}
		}
		return nil
	})
	return outs, err
}
