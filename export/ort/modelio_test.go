package ort

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	onnxruntime "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// checkScanMatchesORT compares scanIO with what ONNX Runtime itself reports.
func checkScanMatchesORT(t *testing.T, name string, model []byte) ([]IOInfo, []IOInfo) {
	t.Helper()
	si, so, err := scanIO(bytes.NewReader(model), int64(len(model)))
	if err != nil {
		t.Fatalf("%s: scanIO: %v", name, err)
	}
	oi, oo, err := askORT(func(*onnxruntime.SessionOptions) ([]onnxruntime.InputOutputInfo, []onnxruntime.InputOutputInfo, error) {
		return onnxruntime.GetInputOutputInfoWithONNXData(model)
	})
	if err != nil {
		t.Fatalf("%s: ORT: %v", name, err)
	}
	if !reflect.DeepEqual(si, oi) || !reflect.DeepEqual(so, oo) {
		t.Errorf("%s: scan says %v -> %v, ONNX Runtime says %v -> %v", name, si, so, oi, oo)
	}
	return si, so
}

func TestScanIOMatchesORTOnFixtures(t *testing.T) {
	mustInit(t)
	for _, p := range fixture.Paths(t) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		checkScanMatchesORT(t, filepath.Base(p), b)
	}
}

func tensorType(elem int32, dims ...any) *onnxpb.TypeProto {
	tt := &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(elem)}
	if dims != nil {
		tt.Shape = &onnxpb.TensorShapeProto{}
		for _, d := range dims {
			dim := &onnxpb.TensorShapeProto_Dimension{}
			switch d := d.(type) {
			case int:
				dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}
			case string:
				dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}
			}
			tt.Shape.Dim = append(tt.Shape.Dim, dim)
		}
	}
	return &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: tt}}
}

func vi(name string, typ *onnxpb.TypeProto) *onnxpb.ValueInfoProto {
	return &onnxpb.ValueInfoProto{Name: proto.String(name), Type: typ}
}

func node(op string, in []string, out ...string) *onnxpb.NodeProto {
	return &onnxpb.NodeProto{OpType: proto.String(op), Input: in, Output: out, Name: proto.String(out[0])}
}

// TestSyntheticModel covers what the fixtures do not: an initializer listed as an
// input, an input without a shape, a dimension with neither value nor name, int64
// inputs and outputs, and several inputs and outputs.
func TestSyntheticModel(t *testing.T) {
	mustInit(t)
	w, err := onnxio.NewFloat("w", []int64{4, 3}, []float32{1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1})
	if err != nil {
		t.Fatal(err)
	}
	m := &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{
			Name:        proto.String("g"),
			Initializer: []*onnxpb.TensorProto{w},
			Node: []*onnxpb.NodeProto{
				node("MatMul", []string{"x", "w"}, "y"),
				node("Identity", []string{"ids"}, "ids_out"),
				node("Neg", []string{"free"}, "free_out"),
			},
			Input: []*onnxpb.ValueInfoProto{
				vi("x", tensorType(onnxio.Float, "N", 4)),
				vi("w", tensorType(onnxio.Float, 4, 3)),
				vi("ids", tensorType(7, 2, struct{}{})),
				vi("free", tensorType(onnxio.Float)),
			},
			Output: []*onnxpb.ValueInfoProto{
				vi("y", tensorType(onnxio.Float, "N", 3)),
				vi("ids_out", tensorType(7, 2, struct{}{})),
				vi("free_out", tensorType(onnxio.Float)),
			},
		},
	}
	b, err := onnxio.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	ins, outs := checkScanMatchesORT(t, "synthetic", b)
	if want := []IOInfo{
		{Name: "x", Shape: []int64{-1, 4}, Type: "float32"},
		{Name: "ids", Shape: []int64{2, -1}, Type: "int64"},
		{Name: "free", Type: "float32"},
	}; !reflect.DeepEqual(ins, want) {
		t.Errorf("inputs %v, want %v", ins, want)
	}
	if len(outs) != 3 || outs[1].Type != "int64" {
		t.Errorf("outputs %v", outs)
	}
	s, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(map[string]Tensor{
		"x":    {Shape: []int64{1, 4}, Data: []float32{1, 2, 3, 4}},
		"ids":  {Shape: []int64{2, 2}, Int64: []int64{5, -6, 1 << 40, 0}},
		"free": {Shape: []int64{2, 1, 1}, Data: []float32{1, 2}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Tensor{
		"y":        {Shape: []int64{1, 3}, Data: []float32{5, 6, 7}},
		"ids_out":  {Shape: []int64{2, 2}, Int64: []int64{5, -6, 1 << 40, 0}},
		"free_out": {Shape: []int64{2, 1, 1}, Data: []float32{-1, -2}},
	}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("got %v, want %v", out, want)
	}
	_, err = s.Run(map[string]Tensor{
		"x":    {Shape: []int64{1, 4}, Data: []float32{1, 2, 3, 4}},
		"ids":  {Shape: []int64{2, 2}, Data: []float32{5, 6, 1, 0}},
		"free": {Shape: []int64{1}, Data: []float32{1}},
	})
	if err == nil || !strings.Contains(err.Error(), `input "ids": model wants int64`) {
		t.Errorf("float data for an int64 input: %v", err)
	}
}

// TestFallbackToORT: a model the scanner does not handle (a sequence input) is
// described by ONNX Runtime instead.
func TestFallbackToORT(t *testing.T) {
	mustInit(t)
	seq := &onnxpb.TypeProto{Value: &onnxpb.TypeProto_SequenceType{
		SequenceType: &onnxpb.TypeProto_Sequence{ElemType: tensorType(onnxio.Float, "n")}}}
	m := &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{
			Name:   proto.String("g"),
			Node:   []*onnxpb.NodeProto{node("SequenceLength", []string{"s"}, "len")},
			Input:  []*onnxpb.ValueInfoProto{vi("s", seq)},
			Output: []*onnxpb.ValueInfoProto{vi("len", tensorType(7))},
		},
	}
	b, err := onnxio.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := scanIO(bytes.NewReader(b), int64(len(b))); err == nil {
		t.Fatal("scanIO accepted a sequence input")
	}
	s, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if in := s.Inputs(); len(in) != 1 || in[0].Name != "s" || in[0].Type == "float32" {
		t.Errorf("inputs %v", in)
	}
	_, err = s.Run(map[string]Tensor{"s": {Shape: []int64{1}, Data: []float32{1}}})
	if err == nil || !strings.Contains(err.Error(), `input "s" has element type`) {
		t.Errorf("Run on a sequence input: %v", err)
	}
}

// TestExternalData: a model whose weights live in a side file runs from another
// working directory (ONNX Runtime resolves the file next to the model).
func TestExternalData(t *testing.T) {
	mustInit(t)
	m, err := onnxio.Load(filepath.Join(testdata, "tv_op17_dynamic.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	x := readNpy(t, filepath.Join(testdata, "tv_op17_dynamic.input.npy"))
	want := readNpy(t, filepath.Join(testdata, "tv_op17_dynamic.output.npy"))
	dir := filepath.Join(t.TempDir(), "model dir")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "m.onnx")
	if err := onnxio.SaveWith(path, m, onnxio.SaveOptions{ExternalData: "m.onnx.data", Threshold: 64}); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	sd, err := os.Stat(path + ".data")
	if err != nil || sd.Size() < 2*st.Size() {
		t.Fatalf("side file %v (model %d bytes)", err, st.Size())
	}
	t.Chdir(t.TempDir())
	out, err := RunFile(path, map[string]Tensor{"input": {Shape: x.Shape, Data: x.Float32}})
	if err != nil {
		t.Fatal(err)
	}
	if d := fixture.MaxAbsDiff(out["logits"].Data, want.Float32); d > 1e-5 {
		t.Errorf("external data: diff %g", d)
	}
}
