package main

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// inspect and allocate refuse, with one line and exit 1, models that every later stage
// refuses: a graph with a cycle, an op the trainer cannot run.
func TestInspectAllocateRefuseUnrunnableModels(t *testing.T) {
	dir := t.TempDir()
	base := fixture.Load(t, "../../testdata/tv_op14_static.onnx").M
	loop := fixture.Clone(base)
	n := loop.Graph.Node[len(loop.Graph.Node)/2]
	n.Input[0] = n.Output[0]
	odd := fixture.Clone(base)
	odd.Graph.Node = append(odd.Graph.Node, &onnxpb.NodeProto{Name: proto.String("odd"), OpType: proto.String("NonMaxSuppression"),
		Input: []string{odd.Graph.Input[0].GetName()}, Output: []string{"odd_out"}})
	for _, c := range []struct {
		name string
		m    *onnxpb.ModelProto
		want string
	}{
		{"loop.onnx", loop, "cycle"},
		{"odd.onnx", odd, `op NonMaxSuppression is not supported`},
	} {
		p := fixture.Save(t, c.m, filepath.Join(dir, c.name))
		for _, args := range [][]string{{"inspect", p}, {"allocate", "--model", p, "--strategy", "uniform", "--out", filepath.Join(dir, "plan.json")}} {
			code, _, stderr := sptctl(t, args...)
			msg := strings.TrimSpace(stderr)
			if code != 1 || !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") || strings.Contains(msg, "class_token") {
				t.Errorf("%s %s: exit %d, %q; want exit 1 and one line saying %q", args[0], c.name, code, msg, c.want)
			}
		}
	}
}
