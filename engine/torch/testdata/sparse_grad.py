#!/usr/bin/python3
"""Dense oracle for the sparse-delta op's test (Debian torch 1.13).

Usage: /usr/bin/python3 engine/torch/testdata/sparse_grad.py DIR

DIR holds x.npy [rows, in], w.npy [out, in], b.npy [out], r.npy [rows, out] and, per
part p, pairs<p>.npy (int64 [n, 2]: output index, input index) and v<p>.npy [n]. The
layer is y = x·(W + D)ᵀ + b with D the dense [out, in] delta that holds every part's
values at its pairs (zero elsewhere), written the way the ONNX graph does it before
fusion (W + ScatterND(zeros, indices, values)); the loss is sum(r * y). It writes
y.npy, dx.npy and, per part, dv<p>.npy: the dense gradient dL/dD read at the part's
pairs.
"""

import glob
import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)
d = sys.argv[1]


def load(name):
    return torch.from_numpy(np.load(os.path.join(d, name)))


x = load("x.npy").requires_grad_(True)
w, b, r = load("w.npy"), load("b.npy"), load("r.npy")
parts = len(glob.glob(os.path.join(d, "pairs*.npy")))
delta = torch.zeros_like(w, requires_grad=True)
eff = delta.detach().clone()
pairs, vals = [], []
for p in range(parts):
    pr, v = load(f"pairs{p}.npy"), load(f"v{p}.npy")
    eff[pr[:, 0], pr[:, 1]] = v
    pairs.append(pr)
# eff holds the values; delta (zeros + eff, with a gradient) is the dense delta.
dense = delta + eff
y = torch.nn.functional.linear(x, w + dense, b)
(r * y).sum().backward()
np.save(os.path.join(d, "y.npy"), y.detach().numpy())
np.save(os.path.join(d, "dx.npy"), x.grad.numpy())
for p, pr in enumerate(pairs):
    np.save(os.path.join(d, f"dv{p}.npy"), delta.grad[pr[:, 0], pr[:, 1]].numpy())
