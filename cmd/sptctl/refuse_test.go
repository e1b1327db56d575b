package main

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// inspect, allocate and inject refuse, with one line and exit 1, models that every later stage
// refuses: a graph with a cycle, an op the trainer cannot run.
func TestRefuseUnrunnableModels(t *testing.T) {
	dir := t.TempDir()
	base := fixture.Load(t, "../../testdata/tv_op14_static.onnx").M
	// a plan made on the sound base: inject must refuse the broken models all the same
	plan := filepath.Join(dir, "base-plan.json")
	if code, _, stderr := sptctl(t, "allocate", "--model", "../../testdata/tv_op14_static.onnx", "--strategy", "linear", "--out", plan); code != 0 {
		t.Fatalf("allocate on the base: exit %d: %s", code, stderr)
	}
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
		for _, args := range [][]string{{"inspect", p}, {"allocate", "--model", p, "--strategy", "uniform", "--out", filepath.Join(dir, "plan.json")},
			{"inject", "--model", p, "--plan", plan, "--out", filepath.Join(dir, "tunable.onnx")}} {
			code, _, stderr := sptctl(t, args...)
			msg := strings.TrimSpace(stderr)
			if code != 1 || !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") || strings.Contains(msg, "class_token") {
				t.Errorf("%s %s: exit %d, %q; want exit 1 and one line saying %q", args[0], c.name, code, msg, c.want)
			}
		}
	}
}
