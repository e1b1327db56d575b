package ort

import (
	"io"

	onnxruntime "github.com/yalue/onnxruntime_go"

	"github.com/sptctl/sptctl/onnxio"
)

// scanIO reads a model's graph inputs (less initializers) and outputs from its
// protobuf with onnxio.PeekIO, as ONNX Runtime reports them. It fails with
// onnxio.ErrPeekUnsupported for anything it does not read; the caller then asks ONNX Runtime
// instead.
//
// It exists because the dynamic session API needs the input and output names before
// the session is made and cannot report them afterwards: asking ONNX Runtime means
// building a second session, which costs about 0.5 s for vit_b_16.
func scanIO(r io.ReaderAt, size int64) (ins, outs []IOInfo, err error) {
	pi, po, err := onnxio.PeekIO(r, size)
	if err != nil {
		return nil, nil, err
	}
	return ioInfos(pi), ioInfos(po), nil
}

func ioInfos(vs []onnxio.ValueInfo) []IOInfo {
	out := make([]IOInfo, len(vs))
	for i, v := range vs {
		out[i] = IOInfo{Name: v.Name, Type: elemTypeName(onnxruntime.TensorElementDataType(v.ElemType)), Shape: v.Shape}
	}
	return out
}
