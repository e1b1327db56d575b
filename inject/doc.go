// Package inject allocates a trainable-parameter budget over a ViT's weights by
// sensitivity (SPT) and rewrites the ONNX graph to make those parameters trainable.
//
// Allocate turns sensitivity scores and a budget into a Plan (plan.json): which block
// matrices get a structured module (LoRA, Adapter or DoRA), which entries of the others are
// trained as sparse deltas, which vectors are trained whole or sparsely, plus the head
// and class token; the baseline strategies (lora-qv, uniform, bitfit, linear, full) are
// plans too. Apply injects a plan into the base model it was made for, recording the
// trainable initializers and the plan in the model's metadata. The package is pure Go.
package inject
