#!/usr/bin/python3
"""Cross-check of `sptctl sensitivity` in PyTorch (Debian's torch 1.13 / torchvision 0.14).

Rebuilds the built-in backbone as a torchvision VisionTransformer from the ONNX file's
weights (found by graph structure: LayerNormalization scale/shift, the MatMul weights
of q/k/v, fc1, fc2 and their bias Adds, the Gemm of the attention projection and of
the head; Identity aliases resolved), checks the rebuild against the model's own head
on the upstream Fashion-MNIST test images (classes 0-4), then sums grad² of the
cross-entropy over 16 batches of 32 training images with a fresh seeded head for the
task, as `sptctl sensitivity` does (docs/ARCHITECTURE.md, "The method"), and prints the share of each block's / layer
type's weights in the top 0.4% as JSON. The batch order and the head's random values
differ from sptctl's, so the shares agree in pattern, not to the digit.

Usage: /usr/bin/python3 bench/spt/torch_sensitivity.py MODEL.onnx TASK_DIR [--split train800val200]
"""
import argparse
import gzip
import json
import os

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from PIL import Image
from torchvision.models.vision_transformer import VisionTransformer

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("data")
ap.add_argument("--split", default="train800val200")
ap.add_argument("--top", type=float, default=0.004)
ap.add_argument("--fmnist", default="/usr/share/datasets/fashion-mnist")
a = ap.parse_args()
torch.set_num_threads(1)

m = onnx.load(a.model)
init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
alias = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "Identity"}


def value(name):
    while name in alias:
        name = alias[name]
    return init.get(name)


lns, mms, gemms, bias_of = [], [], [], {}
for n in m.graph.node:  # ONNX nodes are in topological order
    if n.op_type == "LayerNormalization":
        lns.append((value(n.input[1]), value(n.input[2])))
    elif n.op_type == "MatMul" and value(n.input[1]) is not None:
        mms.append((n.output[0], value(n.input[1])))
    elif n.op_type == "Gemm":
        gemms.append((value(n.input[1]), value(n.input[2])))
    elif n.op_type == "Add":
        for k in (0, 1):
            v = value(n.input[k])
            if v is not None and v.ndim == 1:
                bias_of[n.input[1 - k]] = v
assert len(lns) == 13 and len(mms) == 18 and len(gemms) == 7, (len(lns), len(mms), len(gemms))

vit = VisionTransformer(image_size=28, patch_size=7, num_layers=6, num_heads=3, hidden_dim=96, mlp_dim=384, num_classes=5)
vit.conv_proj = torch.nn.Conv2d(1, 96, kernel_size=7, stride=7)
sd = vit.state_dict()
T = lambda x: torch.tensor(np.ascontiguousarray(x))
for k in ("class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"):
    sd[k] = T(init[k])
for i in range(6):
    p = f"encoder.layers.encoder_layer_{i}."
    sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = T(lns[2 * i][0]), T(lns[2 * i][1])
    sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = T(lns[2 * i + 1][0]), T(lns[2 * i + 1][1])
    (oq, wq), (o1, w1), (o2, w2) = mms[3 * i : 3 * i + 3]
    sd[p + "self_attention.in_proj_weight"], sd[p + "self_attention.in_proj_bias"] = T(wq.T), T(bias_of[oq])
    sd[p + "self_attention.out_proj.weight"], sd[p + "self_attention.out_proj.bias"] = T(gemms[i][0]), T(gemms[i][1])
    sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"] = T(w1.T), T(bias_of[o1])
    sd[p + "mlp.3.weight"], sd[p + "mlp.3.bias"] = T(w2.T), T(bias_of[o2])
sd["encoder.ln.weight"], sd["encoder.ln.bias"] = T(lns[12][0]), T(lns[12][1])
sd["heads.head.weight"], sd["heads.head.bias"] = T(gemms[6][0]), T(gemms[6][1])
vit.load_state_dict(sd)
backbone = sum(p.numel() for n, p in vit.named_parameters() if not n.startswith("heads."))


def norm(x):  # the model's recorded preprocessing: mean 0.5, std 0.5 on [0, 1]
    return torch.tensor((x.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]


# 1. the rebuild is the model: its own head on the upstream test images (classes 0-4)
with gzip.open(os.path.join(a.fmnist, "t10k-images-idx3-ubyte.gz")) as f:
    xs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
with gzip.open(os.path.join(a.fmnist, "t10k-labels-idx1-ubyte.gz")) as f:
    ys = np.frombuffer(f.read(), np.uint8, offset=8)
keep = ys < 5
vit.eval()
with torch.no_grad():
    own = (vit(norm(xs[keep])).argmax(1).numpy() == ys[keep]).mean()

# 2. sensitivity on the task
lines = [l.split() for l in open(os.path.join(a.data, a.split + ".txt"))]
x = norm(np.stack([np.asarray(Image.open(os.path.join(a.data, p)).convert("L")) for p, _ in lines]))
y = torch.tensor([int(l) for _, l in lines])
classes = int(y.max()) + 1
torch.manual_seed(0)
vit.heads.head = torch.nn.Linear(96, classes)  # PyTorch's default init, seeded
vit.train()
perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
acc = {n: torch.zeros_like(p) for n, p in vit.named_parameters() if n.startswith("encoder.layers")}
for b in range(16):
    idx = perm[b * 32 : (b + 1) * 32]
    vit.zero_grad()
    torch.nn.functional.cross_entropy(vit(x[idx]), y[idx]).backward()
    for n, p in vit.named_parameters():
        if n in acc:
            acc[n] += p.grad**2
allv = torch.cat([t.flatten() for t in acc.values()])
k = int(len(allv) * a.top)
thr = allv.topk(k).values[-1]
blk, size = [0] * 6, [0] * 6
kinds = {kd: [0, 0] for kd in ("q", "k", "v", "proj", "fc1", "fc2")}
for n, t in acc.items():
    i = int(n.split(".")[2].rsplit("_", 1)[1])
    blk[i] += int((t >= thr).sum())
    size[i] += t.numel()
    if n.endswith("in_proj_weight"):
        for j, kd in enumerate("qkv"):
            kinds[kd][0] += int((t[96 * j : 96 * (j + 1)] >= thr).sum())
            kinds[kd][1] += 96 * 96
    for suf, kd in (("out_proj.weight", "proj"), ("mlp.0.weight", "fc1"), ("mlp.3.weight", "fc2")):
        if n.endswith(suf):
            kinds[kd][0] += int((t >= thr).sum())
            kinds[kd][1] += t.numel()
print(json.dumps({
    "own_head_top1_upstream": float(own),
    "backbone_params": backbone,
    "top": a.top, "candidates": len(allv), "sensitive": k,
    "blocks": [b / s for b, s in zip(blk, size)],
    "layers": list(kinds), "kinds": [c / s for c, s in kinds.values()],
}))
