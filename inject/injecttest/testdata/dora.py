#!/usr/bin/python3
"""DoRA oracle for inject/injecttest's DoRA tests (Debian torch).

Usage: /usr/bin/python3 dora.py DIR

DIR holds one folder per case with W.npy [out, in] (the layer's weight as the layer
reads it, before DoRA), A.npy [r, in], B.npy [out, r], m.npy [out], G.npy [out, in] (a
gradient of some loss with respect to DoRA's output weight) and scale.txt (the LoRA
scaling s). For each it writes, in float64 arithmetic:

  Wp.npy: W' = m * V / ||V||, V = W + s * B @ A, the norm per output unit (row of V);
  gA.npy, gB.npy, gm.npy: the gradients of sum(G * W') with respect to A, B and m
  (autograd through the norm), i.e. what backward gives DoRA's tensors when G arrives
  at W'.
"""

import os
import sys

import numpy as np
import torch


def main():
    root = sys.argv[1]
    for case in sorted(os.listdir(root)):
        d = os.path.join(root, case)
        load = lambda n: torch.from_numpy(np.load(os.path.join(d, n)).astype(np.float64))
        W, G = load("W.npy"), load("G.npy")
        A, B, m = (load(n).requires_grad_() for n in ("A.npy", "B.npy", "m.npy"))
        with open(os.path.join(d, "scale.txt")) as f:
            s = float(f.read())
        V = W + s * (B @ A)
        Wp = m[:, None] * V / torch.linalg.norm(V, dim=1, keepdim=True)
        gA, gB, gm = torch.autograd.grad((G * Wp).sum(), (A, B, m))
        for name, x in (("Wp", Wp), ("gA", gA), ("gB", gB), ("gm", gm)):
            np.save(os.path.join(d, name + ".npy"), x.detach().numpy().astype(np.float32))


if __name__ == "__main__":
    main()
