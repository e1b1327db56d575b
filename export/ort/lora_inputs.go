package ort

import (
	"fmt"
	"os"
	"slices"

	onnxruntime "github.com/yalue/onnxruntime_go"
)

// OpenWithInputs opens the model at modelPath like Open, and also declares extra as
// inputs that every Run must feed: graph inputs with a default initializer (ONNX
// Runtime's overridable initializers, e.g. the adapter inputs of an adapter-ready
// model), which Open leaves to their defaults. Feeding them as plain inputs is the
// way any ONNX Runtime binding can switch tasks without the adapter API.
func OpenWithInputs(modelPath string, extra []IOInfo, opts ...Option) (*Session, error) {
	o, err := collect(opts)
	if err != nil {
		return nil, err
	}
	if err := Init(); err != nil {
		return nil, err
	}
	f, err := os.Open(modelPath)
	if err != nil {
		return nil, fmt.Errorf("ort: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ort: %w", err)
	}
	var names []string
	for _, x := range extra {
		names = append(names, x.Name)
	}
	s, err := open(modelPath, f, st.Size(), o,
		func(opts *onnxruntime.SessionOptions) ([]onnxruntime.InputOutputInfo, []onnxruntime.InputOutputInfo, error) {
			return onnxruntime.GetInputOutputInfoWithOptions(modelPath, opts)
		},
		func(in, out []string, opts *onnxruntime.SessionOptions) (*onnxruntime.DynamicAdvancedSession, error) {
			for _, n := range names {
				if slices.Contains(in, n) {
					return nil, fmt.Errorf("input %q is a required input, not one with a default", n)
				}
			}
			return onnxruntime.NewDynamicAdvancedSession(modelPath, append(slices.Clone(in), names...), out, opts)
		})
	if err != nil {
		return nil, err
	}
	s.inputs = append(s.inputs, cloneInfo(extra)...)
	return s, nil
}
