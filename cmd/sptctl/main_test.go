package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// sptctl runs the command in-process and returns its exit code, stdout and stderr.
func sptctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"sptctl"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestInspectJSONFindsEveryLayer(t *testing.T) {
	for _, f := range fixture.Paths(t) {
		var truth struct {
			Blocks int `json:"blocks"`
			Params int64
			Head   struct{ In, Out int }
			Layers []struct {
				Op      string
				In, Out int
			}
		}
		b, err := os.ReadFile(strings.TrimSuffix(f, ".onnx") + ".json")
		if err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(b, &truth)
		code, out, stderr := sptctl(t, "inspect", "--json", f)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", f, code, stderr)
		}
		var r inspectReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%s: bad JSON: %v", f, err)
		}
		if r.Blocks != truth.Blocks || len(r.Layers) != 6*truth.Blocks {
			t.Errorf("%s: %d blocks, %d layers; want %d, %d", f, r.Blocks, len(r.Layers), truth.Blocks, 6*truth.Blocks)
			continue
		}
		for i, l := range r.Layers {
			w := truth.Layers[i]
			if l.Op != w.Op || l.In != w.In || l.Out != w.Out {
				t.Errorf("%s: layer %d is %s %dx%d, want %s %dx%d", f, i, l.Op, l.In, l.Out, w.Op, w.In, w.Out)
			}
		}
		if r.Head.In != truth.Head.In || r.Head.Out != truth.Head.Out {
			t.Errorf("%s: head %dx%d, want %dx%d", f, r.Head.In, r.Head.Out, truth.Head.In, truth.Head.Out)
		}
		if r.Params != truth.Params {
			t.Errorf("%s: %d parameters, PyTorch counts %d", f, r.Params, truth.Params)
		}
		if r.Opset < 13 || len(r.Inputs) != 1 || len(r.Inputs[0].Shape) != 4 {
			t.Errorf("%s: opset %d, inputs %v", f, r.Opset, r.Inputs)
		}
	}
}

func TestInspectTable(t *testing.T) {
	code, out, _ := sptctl(t, "inspect", "../../testdata/tv_op17_dynamic.onnx")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"opset       17", "input       input [batch 3 32 32]", "1      fc2", "head        48 -> 10"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestInspectBadInput(t *testing.T) {
	dir := t.TempDir()
	notModel := filepath.Join(dir, "x.onnx")
	os.WriteFile(notModel, []byte("not a model"), 0o644)
	// A valid ONNX model that is no transformer: y = x + x.
	notViT := filepath.Join(dir, "add.onnx")
	m := &onnxpb.ModelProto{IrVersion: proto.Int64(8), OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{Name: proto.String("g"),
			Node:   []*onnxpb.NodeProto{{OpType: proto.String("Add"), Input: []string{"x", "x"}, Output: []string{"y"}}},
			Input:  []*onnxpb.ValueInfoProto{{Name: proto.String("x")}},
			Output: []*onnxpb.ValueInfoProto{{Name: proto.String("y")}}}}
	if err := onnxio.Save(notViT, m); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect"}, 2, "want one MODEL"},
		{[]string{"inspect", filepath.Join(dir, "missing.onnx")}, 1, "missing.onnx"},
		{[]string{"inspect", notModel}, 1, "not an ONNX model"},
		{[]string{"inspect", "--bogus", notModel}, 2, "bogus"},
		{[]string{"inspect", notViT}, 1, "add.onnx: not a ViT"},
	}
	for _, c := range cases {
		code, _, stderr := sptctl(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, code, stderr, c.code, c.want)
		}
		if strings.Contains(stderr, "goroutine") || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("%v: stderr should be one line: %q", c.args, stderr)
		}
	}
}
