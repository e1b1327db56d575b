package torch

// #include <stdlib.h>
// #include "attn.h"
import "C"

import (
	"errors"
	"unsafe"

	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// Softmax → MatMul under bfloat16 autocast (attention's probabilities times the values):
// run as one op (attn.cpp) that computes what the two ops compute (softmax in float32,
// probabilities rounded to bfloat16 for the product) but keeps the scores instead of the
// float32 probabilities and their bfloat16 copy, the memory of one bfloat16 copy of the
// probabilities per attention layer as PyTorch's autocast, and runs the softmax as one
// pass over the bfloat16 scores each way instead of libtorch's casts and float32
// kernels (BenchmarkSoftmaxMatMul). Only for Programs compiled with engine.BF16 (in
// float32 the two ops share one tensor).

// noAttnFusion turns the fusion off (tests compare against the two ops).
var noAttnFusion = false

// findAttnFusions adds to fused and skip the Softmax (last axis) → MatMul chains whose
// probabilities nothing else reads.
func findAttnFusions(g *onnxpb.GraphProto, opset int64, fused map[*onnxpb.NodeProto]*fusion, skip map[*onnxpb.NodeProto]bool) {
	ix := newFusionIndex(g)
	for _, n := range g.GetNode() {
		if skip[n] || fused[n] != nil || n.GetOpType() != "Softmax" || n.GetDomain() != "" && n.GetDomain() != "ai.onnx" ||
			len(n.GetInput()) != 1 || out0(n) == "" {
			continue
		}
		axis := int64(-1)
		if opset < 13 {
			axis = 1
		}
		if a := surgery.Attr(n, "axis"); a != nil {
			axis = a.GetI()
		}
		if axis != -1 {
			continue
		}
		mm := ix.sole(out0(n), "MatMul")
		if mm == nil || skip[mm] || fused[mm] != nil || len(mm.GetInput()) != 2 || mm.GetInput()[0] != out0(n) || out0(mm) == "" {
			continue
		}
		skip[n] = true
		fused[mm] = &fusion{at: mm, mk: opSoftmaxMatMul,
			node: &onnxpb.NodeProto{Name: mm.Name, OpType: strp("SoftmaxMatMul(fused Softmax/MatMul)"),
				Input: []string{n.GetInput()[0], mm.GetInput()[1]}, Output: []string{out0(mm)}}}
	}
}

func opSoftmaxMatMul(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		v, err := r.T(in[1])
		if err != nil {
			return nil, err
		}
		return one(softmaxMatMul(x, v))
	}, nil
}

// softmaxMatMul returns matmul(bfloat16(softmax(float32(x), -1)), bfloat16(v)).
func softmaxMatMul(x, v *ts.Tensor) (*ts.Tensor, error) {
	var msg [256]C.char
	out := C.sptctl_softmax_matmul(x.Ctensor(), v.Ctensor(), &msg[0], C.int(len(msg)))
	if out == nil {
		return nil, errors.New(C.GoString(&msg[0]))
	}
	return ts.New(lib.Ctensor(out)), nil
}

// softmaxRowsKernel runs softmaxMatMul's softmax kernel alone (for tests): p =
// bfloat16(softmax(x)) over the last dimension and, with gp non-nil, softmax's backward
// gx for the output gradient gp. plain runs the loops of CPUs without AVX-512.
func softmaxRowsKernel(x, gp *ts.Tensor, plain bool) (p, gx *ts.Tensor, err error) {
	var msg [256]C.char
	var cp, cgx unsafe.Pointer
	var cgp unsafe.Pointer
	if gp != nil {
		cgp = gp.Ctensor()
	}
	pl := C.int(0)
	if plain {
		pl = 1
	}
	if C.sptctl_softmax_rows(x.Ctensor(), cgp, pl, &cp, &cgx, &msg[0], C.int(len(msg))) != 0 {
		return nil, nil, errors.New(C.GoString(&msg[0]))
	}
	p = ts.New(lib.Ctensor(cp))
	if cgx != nil {
		gx = ts.New(lib.Ctensor(cgx))
	}
	return p, gx, nil
}
