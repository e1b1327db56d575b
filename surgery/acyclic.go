package surgery

import (
	"fmt"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// CheckAcyclic returns an error naming a node on a cycle of the graph, if it has one:
// a node that reads its own output, or nodes that read each other's outputs in a
// loop. No tool can run such a graph; the ViT search would misread it.
func (g *Graph) CheckAcyclic() error {
	const (
		unseen = iota
		visiting
		done
	)
	nodes := g.Proto().GetNode()
	state := make(map[*onnxpb.NodeProto]int, len(nodes))
	name := func(n *onnxpb.NodeProto) string {
		if n.GetName() != "" || len(n.GetOutput()) == 0 {
			return n.GetName()
		}
		return n.GetOutput()[0]
	}
	// Iterative depth-first search: a deep graph must not exhaust the stack.
	type frame struct {
		n *onnxpb.NodeProto
		i int // next input to follow
	}
	for _, root := range nodes {
		if state[root] != unseen {
			continue
		}
		stack := []frame{{root, 0}}
		state[root] = visiting
		for len(stack) > 0 {
			f := &stack[len(stack)-1]
			if f.i == len(f.n.Input) {
				state[f.n] = done
				stack = stack[:len(stack)-1]
				continue
			}
			in := f.n.Input[f.i]
			f.i++
			p := g.producer[in]
			if p == nil {
				continue
			}
			if p == f.n {
				return fmt.Errorf("graph has a cycle: node %q reads its own output %q", name(p), in)
			}
			switch state[p] {
			case visiting:
				return fmt.Errorf("graph has a cycle through node %q (value %q)", name(p), in)
			case unseen:
				state[p] = visiting
				stack = append(stack, frame{p, 0})
			}
		}
	}
	return nil
}
