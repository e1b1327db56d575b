package surgery_test

import (
	"testing"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

func TestTopoSortIsStableAndPlacesNewNodesBeforeTheirConsumer(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op17_dynamic.onnx")
	if err != nil {
		t.Fatal(err)
	}
	g := surgery.New(m)
	before := append(g.Nodes()[:0:0], g.Nodes()...)
	if err := g.TopoSort(); err != nil {
		t.Fatal(err)
	}
	for i, n := range g.Nodes() {
		if n != before[i] {
			t.Fatalf("sorting a sorted graph moved node %d (%s)", i, n.GetName())
		}
	}
	// Put an Identity in front of a node's first input, appended at the end.
	at := 10
	for len(g.Nodes()[at].Input) == 0 || g.Producer(g.Nodes()[at].Input[0]) == nil {
		at++
	}
	target := g.Nodes()[at]
	id := g.AddNode("Identity", "spt/test", []string{target.Input[0]}, []string{"spt/test_out"})
	g.SetInput(target, 0, id.Output[0])
	if err := g.TopoSort(); err != nil {
		t.Fatal(err)
	}
	ns := g.Nodes()
	if ns[at] != id || ns[at+1] != target {
		t.Errorf("new node at %v, its consumer at %v; want %d and %d", index(ns, id), index(ns, target), at, at+1)
	}
	for i := 0; i < at; i++ {
		if ns[i] != before[i] {
			t.Errorf("node %d moved", i)
		}
	}
	// A cycle is an error, not a hang.
	g.SetInput(id, 0, target.Output[0])
	if err := g.TopoSort(); err == nil {
		t.Error("a cycle was sorted")
	}
}

func index(ns []*onnxpb.NodeProto, n *onnxpb.NodeProto) int {
	for i, x := range ns {
		if x == n {
			return i
		}
	}
	return -1
}
