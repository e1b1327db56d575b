package ort

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/export/adapter"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// The OrtApi indices lora.go uses are offsetof(OrtApi, F)/sizeof(void*) in the C
// header of API version 24 (the one onnxruntime_go v1.27.0 ships).
func TestLoraAPIIndices(t *testing.T) {
	gomodcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Skip("go env:", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(gomodcache)), "github.com", "yalue", "onnxruntime_go@v1.27.0")
	if _, err := os.Stat(filepath.Join(dir, "onnxruntime_c_api.h")); err != nil {
		t.Skip("onnxruntime_c_api.h not in the module cache:", err)
	}
	if _, err := exec.LookPath("cc"); err != nil {
		t.Skip("no C compiler")
	}
	tmp := t.TempDir()
	src := "#include <stdio.h>\n#include <stddef.h>\n#include \"onnxruntime_c_api.h\"\nint main(void){\n" +
		"printf(\"%d\\n\", ORT_API_VERSION);\n"
	var names []string
	for name := range loraAPIIndices {
		names = append(names, name)
		src += "printf(\"%zu %zu\\n\", offsetof(OrtApi, " + name + ") / sizeof(void*), offsetof(OrtApi, " + name + ") % sizeof(void*));\n"
	}
	src += "return 0;}\n"
	if err := os.WriteFile(filepath.Join(tmp, "off.c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tmp, "off")
	if out, err := exec.Command("cc", "-I", dir, "-o", bin, filepath.Join(tmp, "off.c")).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if lines[0] != "24" {
		t.Fatalf("header is API version %s, lora.go asks for 24", lines[0])
	}
	for i, name := range names {
		f := strings.Fields(lines[i+1])
		idx, _ := strconv.Atoi(f[0])
		if f[1] != "0" || idx != loraAPIIndices[name] {
			t.Errorf("%s: header index %s (remainder %s), lora.go uses %d", name, f[0], f[1], loraAPIIndices[name])
		}
	}
}

// tinyModel is y = x·W with W [2, 3] an input with a default initializer (ones).
func tinyModel(t *testing.T) string {
	t.Helper()
	w, _ := onnxio.NewFloat("W", []int64{2, 3}, []float32{1, 1, 1, 1, 1, 1})
	vi := func(name string, dims ...int64) *onnxpb.ValueInfoProto {
		var ds []*onnxpb.TensorShapeProto_Dimension
		for _, d := range dims {
			ds = append(ds, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}})
		}
		return &onnxpb.ValueInfoProto{Name: proto.String(name), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{
			TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(onnxio.Float), Shape: &onnxpb.TensorShapeProto{Dim: ds}}}}}
	}
	m := &onnxpb.ModelProto{IrVersion: proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{Name: proto.String("tiny"),
			Node:        []*onnxpb.NodeProto{{OpType: proto.String("MatMul"), Input: []string{"x", "W"}, Output: []string{"y"}}},
			Initializer: []*onnxpb.TensorProto{w},
			Input:       []*onnxpb.ValueInfoProto{vi("x", 1, 2), vi("W", 2, 3)},
			Output:      []*onnxpb.ValueInfoProto{vi("y", 1, 3)},
		}}
	p := filepath.Join(t.TempDir(), "tiny.onnx")
	if err := onnxio.Save(p, m); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunWithAdapters(t *testing.T) {
	mustInit(t)
	path := tinyModel(t)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ins := s.Inputs(); len(ins) != 1 || ins[0].Name != "x" {
		t.Fatalf("required inputs %v", ins)
	}
	x := map[string]Tensor{"x": {Shape: []int64{1, 2}, Data: []float32{1, 2}}}
	tensors := map[string]adapter.Tensor{"W": adapter.FloatTensor([]int64{2, 3}, []float32{1, 2, 3, 4, 5, 6})}
	file := filepath.Join(t.TempDir(), "w"+adapter.Ext)
	if err := adapter.Write(file, tensors); err != nil {
		t.Fatal(err)
	}
	a, err := LoadLoraAdapter(file)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := adapter.Encode(map[string]adapter.Tensor{"W": adapter.FloatTensor([]int64{2, 3}, []float32{0, 0, 1, 0, 0, 1})}, adapter.WriteOptions{})
	a2, err := LoraAdapterFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct {
		a    *LoraAdapter
		want []float32
	}{{nil, []float32{3, 3, 3}}, {a, []float32{9, 12, 15}}, {a2, []float32{0, 0, 3}}, {nil, []float32{3, 3, 3}}, {a, []float32{9, 12, 15}}} {
		var ads []*LoraAdapter
		if c.a != nil {
			ads = append(ads, c.a)
		}
		y, err := s.RunWithAdapters(x, ads...)
		if err != nil {
			t.Fatal(err)
		}
		if got := y["y"].Data; fmtFloats(got) != fmtFloats(c.want) {
			t.Errorf("run %d: got %v, want %v", i, got, c.want)
		}
	}
	a.Close()
	a.Close()
	if _, err := s.RunWithAdapters(x, a); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("closed adapter: %v", err)
	}
	if _, err := LoraAdapterFromBytes([]byte("not an adapter at all")); err == nil {
		t.Error("garbage bytes loaded")
	}
	if _, err := LoadLoraAdapter(filepath.Join(t.TempDir(), "missing.onnx_adapter")); err == nil {
		t.Error("missing file loaded")
	}
	// Plain inputs: the same W fed per run.
	ps, err := OpenWithInputs(path, []IOInfo{{Name: "W", Shape: []int64{2, 3}, Type: "float32"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	y, err := ps.Run(map[string]Tensor{"x": x["x"], "W": {Shape: []int64{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}}})
	if err != nil {
		t.Fatal(err)
	}
	if fmtFloats(y["y"].Data) != fmtFloats([]float32{9, 12, 15}) {
		t.Errorf("plain inputs: %v", y["y"].Data)
	}
	if _, err := OpenWithInputs(path, []IOInfo{{Name: "x", Shape: []int64{1, 2}, Type: "float32"}}); err == nil {
		t.Error("a required input accepted as an extra one")
	}
}

func fmtFloats(v []float32) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = strconv.FormatFloat(float64(x), 'g', -1, 32)
	}
	return "[" + strings.Join(parts, " ") + "]"
}
