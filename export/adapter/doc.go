// Package adapter serves many SPT tasks tuned from one base model with one ONNX
// Runtime session: BuildReady makes an "adapter-ready" graph in which every tensor
// any task tuned (LoRA A and B, Adapter weights, sparse-delta values and indices,
// tuned vectors, class token, head) is a graph input with a default initializer, the
// defaults making it compute the base model; ForTask gives one task's values for
// those inputs; Write and Read store them as an ONNX Runtime .onnx_adapter file
// (FlatBuffers, schema in internal/fb/adapter.fbs), which ONNX Runtime 1.20+ applies
// per run (CreateLoraAdapter + RunOptionsAddActiveLoraAdapter, see export/ort); Check
// compares a set of tensors with the ready graph's inputs before ONNX Runtime sees
// them. See docs/adapters.md.
package adapter
