#!/usr/bin/python3
"""Sensitivity oracle (Debian torch 1.13): sum over batches of squared gradients.

Usage: /usr/bin/python3 sensitivity/testdata/scores.py FIXTURE DIR

Rebuilds the PyTorch module testdata/FIXTURE.onnx was exported from and loads its
weights from the ONNX initializers (engine/torch/testdata/grads.py), replaces the classifier
with DIR/head_weight.npy [C, in] and DIR/head_bias.npy [C], then, in train mode, for
each DIR/batchK.npy (images) with DIR/labelsK.npy (int64), K = 0, 1, ... adds the
squared gradient of the mean cross-entropy to each initializer's score. Writes
DIR/out/sK.npy per initializer (in the initializer's layout) and DIR/out/scores.json.
"""
import json
import os
import sys

import numpy as np
import onnx
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "engine", "torch", "testdata"))
import grads  # noqa: E402


def main():
    name, d = sys.argv[1], sys.argv[2]
    model, _ = grads.build(name)
    mapping, params = grads.load_weights(model, onnx.load(os.path.join(grads.FIXTURES_DIR, name + ".onnx")))
    # The classifier is the last Linear module; swap in the task head.
    head_name, head = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    w = torch.from_numpy(np.load(os.path.join(d, "head_weight.npy")))
    b = torch.from_numpy(np.load(os.path.join(d, "head_bias.npy")))
    new = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    parent = model
    parts = head_name.split(".")
    for p in parts[:-1]:
        parent = getattr(parent, p)
    setattr(parent, parts[-1], new)
    model.train()
    scores = {}
    k = 0
    while os.path.exists(os.path.join(d, f"batch{k}.npy")):
        x = torch.from_numpy(np.load(os.path.join(d, f"batch{k}.npy")))
        y = torch.from_numpy(np.load(os.path.join(d, f"labels{k}.npy")))
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for iname, hits in mapping:
            total = None
            for pname, tr in hits:
                if pname.startswith(head_name + "."):
                    continue
                g = params[pname].grad
                if g is None:
                    g = torch.zeros_like(params[pname])
                g = g.T if tr else g
                total = g.clone() if total is None else total + g
            if total is None:
                continue
            scores[iname] = scores.get(iname, 0) + total.numpy().astype(np.float64) ** 2
        k += 1
    out = os.path.join(d, "out")
    os.makedirs(out, exist_ok=True)
    index = {}
    for i, (iname, s) in enumerate(sorted(scores.items())):
        np.save(os.path.join(out, f"s{i}.npy"), np.ascontiguousarray(s, dtype=np.float32))
        index[iname] = f"s{i}.npy"
    with open(os.path.join(out, "scores.json"), "w") as f:
        json.dump(index, f)


if __name__ == "__main__":
    main()
