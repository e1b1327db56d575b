package engine

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

func TestCheckOps(t *testing.T) {
	if !slices.IsSorted(supportedOps) {
		t.Fatal("supportedOps is not sorted (Supports searches it)")
	}
	node := func(name, domain, op string) *onnxpb.NodeProto {
		return &onnxpb.NodeProto{Name: proto.String(name), Domain: proto.String(domain), OpType: proto.String(op), Output: []string{name + ":0"}}
	}
	ok := &onnxpb.GraphProto{Node: []*onnxpb.NodeProto{node("a", "", "MatMul"), node("b", "ai.onnx", "Add")}}
	if err := CheckOps(ok); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*onnxpb.NodeProto{node("c", "", "NonMaxSuppression"), node("d", "com.microsoft", "Gelu"), node("e", "", "If")} {
		g := &onnxpb.GraphProto{Node: append(slices.Clone(ok.Node), n)}
		err := CheckOps(g)
		if err == nil || !strings.Contains(err.Error(), `"`+n.GetName()+`"`) || !strings.Contains(err.Error(), n.GetOpType()) {
			t.Errorf("%s %s: %v", n.GetDomain(), n.GetOpType(), err)
		}
	}
}
