package sensitivity

import (
	"bytes"
	"context"
	"encoding/binary"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/safetensors"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// scoreFile writes a score file for m holding the given tensors, with the model's
// fingerprint and classes metadata.
func scoreFile(t testing.TB, m *onnxpb.ModelProto, tensors map[string]safetensors.Tensor, classes string) string {
	t.Helper()
	fp, _ := onnxio.Fingerprint(m.Graph)
	p := filepath.Join(t.TempDir(), "s.safetensors")
	f := &safetensors.File{Tensors: tensors, Metadata: map[string]string{"format": "sptctl-sensitivity-1", "fingerprint": fp,
		"classes": classes, "head_seed": "1", "batches": "1", "batch_size": "1", "examples": "1"}}
	if err := safetensors.Write(p, f); err != nil {
		t.Fatal(err)
	}
	return p
}

// matrix is the model's first 2-D, non-square float initializer.
func matrix(t testing.TB, m *onnxpb.ModelProto) *onnxpb.TensorProto {
	for _, x := range m.Graph.Initializer {
		if x.GetDataType() == onnxio.Float && len(x.Dims) == 2 && x.Dims[0] != x.Dims[1] {
			return x
		}
	}
	t.Fatal("no non-square matrix")
	return nil
}

// A score file that does not fit its model, or whose values are not sums of squares,
// is refused with one line naming the tensor.
func TestScoreFileValidation(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
	if err != nil {
		t.Fatal(err)
	}
	w := matrix(t, m)
	n := int(onnxio.NumElements(w.Dims))
	ok := func() []float32 { return make([]float32, n) }
	with := func(i int, x float32) []float32 { v := ok(); v[i] = x; return v }
	name := w.GetName()
	for _, c := range []struct {
		what    string
		tensors map[string]safetensors.Tensor
		classes string
		want    string // in Read's or CheckModel's error
	}{
		{"transposed shape", map[string]safetensors.Tensor{name: {Shape: []int64{w.Dims[1], w.Dims[0]}, Data: ok()}}, "5", "shape"},
		{"flattened shape", map[string]safetensors.Tensor{name: {Shape: []int64{int64(n)}, Data: ok()}}, "5", "shape"},
		{"unknown tensor", map[string]safetensors.Tensor{"blocks.99.w": {Shape: []int64{1}, Data: []float32{1}}}, "5", "no such initializer"},
		{"NaN", map[string]safetensors.Tensor{name: {Shape: w.Dims, Data: with(3, float32(math.NaN()))}}, "5", "score 3 is NaN"},
		{"infinite", map[string]safetensors.Tensor{name: {Shape: w.Dims, Data: with(4, float32(math.Inf(1)))}}, "5", "score 4 is +Inf"},
		{"negative", map[string]safetensors.Tensor{name: {Shape: w.Dims, Data: with(5, -1)}}, "5", "score 5 is -1"},
		{"classes 1e12", map[string]safetensors.Tensor{name: {Shape: w.Dims, Data: ok()}}, "1000000000000", "class count"},
		{"classes 0", map[string]safetensors.Tensor{name: {Shape: w.Dims, Data: ok()}}, "0", "class count"},
	} {
		p := scoreFile(t, m, c.tensors, c.classes)
		_, info, err := Read(p)
		if err == nil {
			err = info.CheckModel("m.onnx", m)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want one line saying %q", c.what, err, c.want)
			continue
		}
		if c.what != "classes 1e12" && c.what != "classes 0" && !strings.Contains(err.Error(), `"`) {
			t.Errorf("%s: error %v does not name the tensor", c.what, err)
		}
	}
	// The same file with the right shape is accepted.
	p := scoreFile(t, m, map[string]safetensors.Tensor{name: {Shape: w.Dims, Data: with(1, 2)}}, "5")
	if _, info, err := Read(p); err != nil || info.CheckModel("m.onnx", m) != nil {
		t.Fatalf("good score file: %v / %v", err, info.CheckModel("m.onnx", m))
	}
	// Overlapping byte ranges (two tensors sharing data) are refused by the reader.
	b, _ := os.ReadFile(p)
	hl := binary.LittleEndian.Uint64(b)
	h := string(b[8 : 8+hl])
	h = strings.Replace(h, "{", `{"`+name+`.copy":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},`, 1)
	for len(h)%8 != 0 {
		h += " "
	}
	nb := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	nb = append(append(nb, h...), b[8+hl:]...)
	os.WriteFile(p, nb, 0o644)
	if _, _, err := Read(p); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("overlapping tensors: %v", err)
	}
}

// FuzzRead feeds arbitrary bytes to the score-file reader and what it accepts to
// CheckModel: neither may panic or give a message of more than one line.
// testdata/fuzz/FuzzRead holds a score file for the fixture as a seed.
func FuzzRead(f *testing.F) {
	m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
	if err != nil {
		f.Fatal(err)
	}
	w := matrix(f, m)
	seed, _ := os.ReadFile(scoreFile(f, m, map[string]safetensors.Tensor{w.GetName(): {Shape: w.Dims, Data: make([]float32, onnxio.NumElements(w.Dims))}}, "5"))
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "s.safetensors")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		_, info, err := Read(p)
		if err == nil {
			err = info.CheckModel("m.onnx", m)
		}
		if err != nil && bytes.ContainsRune([]byte(err.Error()), '\n') {
			t.Fatalf("error of more than one line: %q", err)
		}
	})
}

// A class count no task has is refused before any work (the head alone would be
// classes × hidden size floats).
func TestComputeRefusesHugeClassCount(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = Compute(context.Background(), nil, m, nil, meta.Preprocess{}, Options{Batches: 1, BatchSize: 1, Classes: 1_000_000_000_000}, nil)
	if err == nil || !strings.Contains(err.Error(), "class count from 1 to 100000") {
		t.Fatalf("got %v", err)
	}
}

// --classes below the data set's labels is refused before any work.
func TestComputeRefusesLabelsOutsideClasses(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := image.NewGray(image.Rect(0, 0, 2, 2))
	var buf bytes.Buffer
	png.Encode(&buf, img)
	os.WriteFile(filepath.Join(dir, "a.png"), buf.Bytes(), 0o644)
	os.WriteFile(filepath.Join(dir, "train800.txt"), []byte("a.png 0\na.png 1\na.png 2\na.png 3\na.png 4\n"), 0o644)
	ds, err := data.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	split, _ := ds.Split("train")
	_, _, err = Compute(context.Background(), nil, m, split, meta.Preprocess{}, Options{Batches: 1, BatchSize: 1, Classes: 3}, nil)
	if err == nil || !strings.Contains(err.Error(), "label 3, but the task has 3 classes") {
		t.Fatalf("got %v", err)
	}
}
