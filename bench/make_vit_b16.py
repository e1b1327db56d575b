#!/usr/bin/python3
"""Write torchvision's vit_b_16 with random (seeded) weights as ONNX, for benchmarks.

Run with Debian's python (torch 1.13, torchvision 0.14, onnx 1.12):

    /usr/bin/python3 bench/make_vit_b16.py [--opset 17|14] [--static] [--seed 0] [OUT]

OUT defaults to bench/cache/vit_b_16.onnx (git-ignored). No weights are downloaded:
torchvision.models.vit_b_16(weights=None) is built with torchvision's own init under a
fixed seed, and its classifier head, which torchvision sets to zero, gets a normal
(std 0.02) weight so that gradients through the blocks are not all zero. Export uses
PyTorch's own exporter with constant folding, the batch axis dynamic unless --static
(then batch 1). Input "input" [B, 3, 224, 224], output "logits" [B, 1000].

Takes about 25 s (10 s of it the export) and 2.2 GB peak memory on 2 cores.
"""

import argparse
import os
import sys
import time
import warnings

import torch
import torch.nn as nn
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))


def build(seed):
    torch.manual_seed(seed)
    m = torchvision.models.vit_b_16(weights=None)
    with torch.no_grad():
        nn.init.normal_(m.heads.head.weight, std=0.02)
    return m.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(HERE, "cache", "vit_b_16.onnx"))
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or 14)")
    ap.add_argument("--static", action="store_true", help="fixed batch 1 instead of a dynamic batch axis")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()

    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    t0 = time.time()
    m = build(a.seed)
    # Parameters keep requires_grad=True and export runs with grad enabled (no
    # torch.no_grad()): otherwise nn.MultiheadAttention takes its fast path
    # (aten::_native_multi_head_attention), which the exporter cannot write.
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(a.seed + 1))
    dyn = None if a.static else {"input": {0: "batch"}, "logits": {0: "batch"}}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    torch.onnx.export(
        m, (x,), tmp,
        export_params=True, opset_version=a.opset, do_constant_folding=True,
        input_names=["input"], output_names=["logits"], dynamic_axes=dyn,
        training=torch.onnx.TrainingMode.EVAL, verbose=False)
    os.replace(tmp, a.out)
    dt = time.time() - t0

    import onnx  # only to report what was written
    model = onnx.load(a.out)
    g = model.graph
    ident = sum(1 for n in g.node if n.op_type == "Identity")
    print(f"{a.out}: {os.path.getsize(a.out)} bytes, opset {a.opset}, "
          f"{'batch 1' if a.static else 'dynamic batch'}, {len(g.node)} nodes "
          f"({ident} Identity), {len(g.initializer)} initializers, "
          f"{sum(p.numel() for p in m.parameters())} parameters, {dt:.1f} s to build and export")


if __name__ == "__main__":
    sys.exit(main())
