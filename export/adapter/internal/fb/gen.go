// Package fb is the FlatBuffers code flatc generates from adapter.fbs, the schema of
// ONNX Runtime's .onnx_adapter files. Use package adapter, not this one.
package fb

//go:generate sh -c "flatc --go --go-namespace fb -o .. adapter.fbs && gofmt -w ."
