package ort

import (
	"fmt"
	"io"
	"os"

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

// Peek returns the inputs and outputs of the model at modelPath as a Session would
// report them, without loading its weights: read from the protobuf where onnxio.PeekIO
// can, else from a throwaway unoptimised ONNX Runtime session.
func Peek(modelPath string) (ins, outs []IOInfo, err error) {
	f, size, err := openModelFile(modelPath)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	if ins, outs, err = scanIO(f, size); err == nil {
		return ins, outs, nil
	}
	if err := Init(); err != nil {
		return nil, nil, err
	}
	ins, outs, err = askORT(func(opts *onnxruntime.SessionOptions) ([]onnxruntime.InputOutputInfo, []onnxruntime.InputOutputInfo, error) {
		return onnxruntime.GetInputOutputInfoWithOptions(modelPath, opts)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ort: %s: %w", modelPath, err)
	}
	return ins, outs, nil
}

// openModelFile opens a model file for reading, refusing a folder.
func openModelFile(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("ort: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("ort: %w", err)
	}
	if st.IsDir() {
		f.Close()
		return nil, 0, fmt.Errorf("ort: %s is a folder, not an ONNX model", path)
	}
	return f, st.Size(), nil
}

func ioInfos(vs []onnxio.ValueInfo) []IOInfo {
	out := make([]IOInfo, len(vs))
	for i, v := range vs {
		out[i] = IOInfo{Name: v.Name, Type: elemTypeName(onnxruntime.TensorElementDataType(v.ElemType)), Shape: v.Shape}
	}
	return out
}
