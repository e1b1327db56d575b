// Package sensitivity scores how much each weight of a ViT matters for a task, the
// first step of SPT: the squared gradients of the task's cross-entropy loss, summed
// over the first batches of its training split, for every weight of the transformer
// blocks. It also summarises where the most sensitive weights are and plots it.
package sensitivity
