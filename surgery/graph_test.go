package surgery_test

import (
	"os/exec"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

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

// TestRemoveDeadNodesCleansUp cuts the graph before its head: the head's nodes, its
// initializers, their IR<4-style input entries and value_info for their outputs must
// all go, and the result must still be a valid model for onnx.checker.
func TestRemoveDeadNodesCleansUp(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op17_dynamic.onnx")
	if err != nil {
		t.Fatal(err)
	}
	g := surgery.New(m)
	v, err := surgery.FindViT(g)
	if err != nil {
		t.Fatal(err)
	}
	gp := g.Proto()
	head := v.Head.Node
	w := g.Initializer(g.Source(v.Head.Weight))
	// IR < 4 style: the head weight is also listed as a graph input; and a value_info
	// for the head's output.
	gp.Input = append(gp.Input, &onnxpb.ValueInfoProto{Name: w.Name})
	gp.ValueInfo = append(gp.ValueInfo, &onnxpb.ValueInfoProto{Name: proto.String(head.Output[0])})
	// The graph output becomes the head's input: the head and its weights are dead.
	gp.Output[0].Name = proto.String(head.Input[0])
	if removed := g.RemoveDeadNodes(); removed == 0 {
		t.Fatal("nothing removed")
	}
	for _, n := range g.Nodes() {
		if n == head {
			t.Fatal("the head node is still there")
		}
	}
	if g.Initializer(w.GetName()) != nil {
		t.Error("the head weight is still an initializer")
	}
	for _, in := range gp.Input {
		if in.GetName() == w.GetName() {
			t.Error("the head weight is still a graph input")
		}
	}
	for _, vi := range gp.ValueInfo {
		if vi.GetName() == head.Output[0] {
			t.Error("value_info of the removed head's output is still there")
		}
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import onnx,sys; onnx.checker.check_model(onnx.load(sys.argv[1]))", save(t, m)).CombinedOutput(); err != nil {
		t.Errorf("onnx.checker: %v\n%s", err, out)
	}
}

func save(t *testing.T, m *onnxpb.ModelProto) string {
	p := filepath.Join(t.TempDir(), "m.onnx")
	if err := onnxio.Save(p, m); err != nil {
		t.Fatal(err)
	}
	return p
}
