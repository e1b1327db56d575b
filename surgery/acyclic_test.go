package surgery_test

import (
	"strings"
	"testing"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// A self-loop or a longer cycle is reported as a cycle naming a node on it (a self-loop
// used to surface as a problem with class_token).
func TestCycleNamed(t *testing.T) {
	load := func() *onnxpb.ModelProto {
		m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if _, err := surgery.FindViT(surgery.New(load())); err != nil {
		t.Fatal(err)
	}
	// pick is the middle node that reads another node's output, and that producer.
	pick := func(m *onnxpb.ModelProto) (n, prod *onnxpb.NodeProto) {
		g := surgery.New(m)
		nodes := m.Graph.Node
		for _, n := range nodes[len(nodes)/2:] {
			for _, in := range n.Input {
				if p := g.Producer(in); p != nil {
					return n, p
				}
			}
		}
		t.Fatal("no node reads another's output")
		return nil, nil
	}

	self := load()
	n, _ := pick(self)
	n.Input[0] = n.Output[0]
	g := surgery.New(self)
	_, err := surgery.FindViT(g)
	if err == nil || !strings.Contains(err.Error(), "cycle") || !strings.Contains(err.Error(), n.GetName()) || strings.Contains(err.Error(), "class_token") {
		t.Errorf("self-loop on %s: %v", n.GetName(), err)
	}
	if err := g.TopoSort(); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("TopoSort of a self-loop: %v", err)
	}

	loop := load()
	n, prod := pick(loop)
	// The producer now reads n's output: prod → n → prod.
	prod.Input[0] = n.Output[0]
	_, err = surgery.FindViT(surgery.New(loop))
	if err == nil || !strings.Contains(err.Error(), "cycle through node") ||
		!(strings.Contains(err.Error(), n.GetName()) || strings.Contains(err.Error(), prod.GetName())) {
		t.Errorf("cycle %s ↔ %s: %v", n.GetName(), prod.GetName(), err)
	}
}
