// Package export turns a model trained by sptctl (an injected graph with trained
// values) into what ONNX Runtime serves:
//
//   - Merge folds the task into the base model's weights by asking each module the
//     plan records to fold (inject.Tuner.Fold): LoRA (W += scaling·B·A in W's stored
//     layout), DoRA (W = m·V/‖V‖), sparse deltas (W[idx] += values), tuned vectors,
//     the class token and the new head. For plans of foldable modules the result has
//     exactly the base graph's nodes; Adapters contain a GELU and stay as nodes.
//   - Sidecar writes the trained graph as DIR/TASK.onnx whose base tensors are external
//     data in one shared DIR/base.data (every base initializer, name order, aligned;
//     written once and checked byte for byte when reused, see BaseInfo) and whose task
//     tensors are in DIR/TASK.data.
//
// Both need the base model the trained model was injected from (its fingerprint is the
// plan's), and both write through a staging folder: the export is complete and checked
// (Verify, e.g. ONNX Runtime parity) before any file appears at its final path.
//
// This package is pure Go; running models is export/ort's job.
package export
