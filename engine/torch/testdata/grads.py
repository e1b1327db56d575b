#!/usr/bin/python3
"""Gradient oracle for the executor's backward parity tests (Debian torch 1.13).

Usage: /usr/bin/python3 engine/torch/testdata/grads.py OUTDIR NAME:N [NAME:N ...]

For each fixture NAME (testdata/NAME.onnx) it rebuilds the PyTorch module the fixture
was exported from (testdata/make_fixtures.py's FIXTURES and build()), then loads every
weight from the ONNX file's initializers, so the oracle depends on the ONNX weights,
not on make_fixtures' seeds. An initializer is matched to the module parameter(s) with
the same values (the module is rebuilt with make_fixtures' seed), directly or transposed (the exporter writes MatMul weights as
`onnx::MatMul_N` = W.T) — several parameters when the exporter de-duplicated equal
tensors into one initializer (whose gradient is then the sum of theirs). It fails if a
float initializer matches no parameter or a parameter no initializer.

The input: with N = 0, NAME.input.npy; otherwise N images from torch.randn with a seed.
Labels: example i has label i mod classes. Loss: mean cross-entropy, module in train
mode (every dropout of these modules has p = 0). Written under OUTDIR/NAME_N/:
input.npy, labels.npy (int64), logits.npy, loss.npy, g<k>.npy (float32 gradient of the
k-th float initializer, in the initializer's own layout) and grads.json ({"name":
"g<k>.npy"}).
"""

import json
import os
import sys

import numpy as np
import onnx
import torch
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "..", "testdata"))
sys.path.insert(0, FIXTURES_DIR)

import make_fixtures as mf  # noqa: E402  (sets one thread, fixed warnings)


def spec_of(name):
    for idx, spec in enumerate(mf.FIXTURES):
        if spec[0] == name:
            return idx, spec
    raise SystemExit(f"grads.py: no fixture {name!r} in make_fixtures.FIXTURES")


def build(name):
    idx, spec = spec_of(name)
    # make_fixtures.make seeds like this before building: the rebuilt parameters then
    # hold the exported values, which is how initializers are matched to parameters.
    torch.manual_seed(1000 + idx)
    _, style, _, batch, _, ch, image, patch, dim, heads, mlp = spec
    default_init = name in getattr(mf, "DEFAULT_INIT", set())
    try:
        m = mf.build(style, ch, image, patch, dim, heads, mlp, default_init=default_init)
    except TypeError:
        m = mf.build(style, ch, image, patch, dim, heads, mlp)
    return m, spec


def load_weights(model, onnx_model):
    """Copy ONNX initializer values into the module; return [(init name, [(param, transposed)])]."""
    params = dict(model.named_parameters())
    claimed = {}
    mapping = []
    for init in onnx_model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init)
        hits = []
        for pname, p in params.items():
            v = p.detach().numpy()
            if v.shape == a.shape and np.array_equal(v, a):
                hits.append((pname, False))
            elif v.ndim == 2 and v.T.shape == a.shape and np.array_equal(v.T, a):
                hits.append((pname, True))
        if not hits:
            raise SystemExit(f"grads.py: initializer {init.name!r} {a.shape} matches no parameter")
        for pname, tr in hits:
            if pname in claimed:
                raise SystemExit(f"grads.py: parameter {pname} matches {claimed[pname]!r} and {init.name!r}")
            claimed[pname] = init.name
        mapping.append((init.name, hits))
    missing = sorted(set(params) - set(claimed))
    if missing:
        raise SystemExit(f"grads.py: parameters without an initializer: {missing}")
    # The values already agree; copying makes the dependency on the ONNX file explicit.
    with torch.no_grad():
        for name, hits in mapping:
            a = torch.from_numpy(numpy_helper.to_array(
                next(i for i in onnx_model.graph.initializer if i.name == name)).copy())
            for pname, tr in hits:
                params[pname].copy_(a.T if tr else a)
    return mapping, params


def run(outdir, name, n):
    model, spec = build(name)
    onnx_model = onnx.load(os.path.join(FIXTURES_DIR, name + ".onnx"))
    mapping, params = load_weights(model, onnx_model)
    ch, image = spec[5], spec[6]
    if n == 0:
        x = torch.from_numpy(np.load(os.path.join(FIXTURES_DIR, name + ".input.npy")))
    else:
        g = torch.Generator().manual_seed(7000 + n)
        x = torch.randn(n, ch, image, image, generator=g, dtype=torch.float32)
    labels = torch.arange(x.shape[0], dtype=torch.int64) % mf.CLASSES
    model.train()
    model.zero_grad()
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    if n == 0:  # the rebuilt module is the exported one
        want = np.load(os.path.join(FIXTURES_DIR, name + ".output.npy"))
        err = float(np.abs(logits.detach().numpy() - want).max())
        if not err < 1e-5:
            raise SystemExit(f"grads.py: {name}: rebuilt module differs from {name}.output.npy by {err}")

    d = os.path.join(outdir, f"{name}_{n}")
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(d, "labels.npy"), labels.numpy())
    np.save(os.path.join(d, "logits.npy"), np.ascontiguousarray(logits.detach().numpy(), dtype=np.float32))
    np.save(os.path.join(d, "loss.npy"), np.array([loss.item()], dtype=np.float32))
    index = {}
    for k, (iname, hits) in enumerate(mapping):
        total = None
        for pname, tr in hits:
            gr = params[pname].grad
            if gr is None:
                gr = torch.zeros_like(params[pname])
            gr = gr.T if tr else gr
            total = gr.clone() if total is None else total + gr
        fn = f"g{k}.npy"
        np.save(os.path.join(d, fn), np.ascontiguousarray(total.numpy(), dtype=np.float32))
        index[iname] = fn
    with open(os.path.join(d, "grads.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    return d


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    outdir = sys.argv[1]
    for arg in sys.argv[2:]:
        name, _, n = arg.partition(":")
        n = int(n or 0)
        print(run(outdir, name, n))


if __name__ == "__main__":
    main()
