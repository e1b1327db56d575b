package sensitivity

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/safetensors"
	"github.com/sptctl/sptctl/onnxio"
)

func TestScoresRoundTripAndFingerprint(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := onnxio.Fingerprint(m.Graph)
	w := m.Graph.Initializer[0]
	s := Scores{w.GetName(): make([]float32, onnxio.NumElements(w.Dims))}
	s[w.GetName()][1] = 2.5
	p := filepath.Join(t.TempDir(), "s.safetensors")
	if err := Write(p, m, s, Info{Fingerprint: fp, Classes: 5, HeadSeed: 7, Batches: 2, BatchSize: 4, Examples: 8}); err != nil {
		t.Fatal(err)
	}
	got, info, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if info.Classes != 5 || info.HeadSeed != 7 || info.Examples != 8 || got[w.GetName()][1] != 2.5 {
		t.Errorf("read back %+v", info)
	}
	if err := info.CheckModel("m.onnx", m); err != nil {
		t.Error(err)
	}
	other, _ := onnxio.Load("../testdata/timm_op14.onnx")
	if err := info.CheckModel("timm.onnx", other); err == nil || !strings.Contains(err.Error(), "another model") {
		t.Errorf("scores accepted for another model: %v", err)
	}
	if err := Write(p, m, Scores{"nope": {1}}, Info{}); err == nil {
		t.Error("scores for an unknown initializer were written")
	}
}

func TestScoresRecordTheHead(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
	if err != nil {
		t.Fatal(err)
	}
	w := m.Graph.Initializer[0]
	s := Scores{w.GetName(): make([]float32, onnxio.NumElements(w.Dims))}
	p := filepath.Join(t.TempDir(), "s.safetensors")
	hv := &inject.HeadValues{Weight: []float32{1, 2, 3, 4, 5, 6}, Bias: []float32{-1, 1}}
	if err := Write(p, m, s, Info{Classes: 2, Head: inject.HeadProbe, HeadSeeds: 1, HeadValues: hv, HeadTop1: 0.75, HeadExamples: 40}); err != nil {
		t.Fatal(err)
	}
	got, info, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || info.Head != inject.HeadProbe || info.HeadTop1 != 0.75 || info.HeadExamples != 40 ||
		!slices.Equal(info.HeadValues.Weight, hv.Weight) || !slices.Equal(info.HeadValues.Bias, hv.Bias) {
		t.Errorf("read back %d tensors, %+v", len(got), info)
	}
	// A file from before --head: a random head.
	f, _ := safetensors.Read(p)
	delete(f.Metadata, "head")
	delete(f.Metadata, "head_seeds")
	delete(f.Tensors, headWeightTensor)
	delete(f.Tensors, headBiasTensor)
	safetensors.Write(p, f)
	if _, info, err = Read(p); err != nil || info.Head != inject.HeadRandom || info.HeadSeeds != 1 || info.HeadValues != nil {
		t.Errorf("old file: %+v, %v", info, err)
	}
}
