"""Apply an `sptctl allocate` plan (LoRA type) to a torchvision VisionTransformer, for the
PyTorch side of bench/serve: the same trainable parameters on the same layers, built the
way inject builds them in ONNX.

- A matrix with mode "lora" gets a branch  y += B(A(dropout(x))) * scaling  (A: [r, in],
  B: [out, r], dropout 0.1 on the branch input as `sptctl inject --dropout 0.1`), the base
  weight frozen. q, k, v are row slices of nn.MultiheadAttention's packed in_proj: the
  attention is recomputed as F.multi_head_attention_forward does (packed projection, split,
  per-head softmax(q k^T / sqrt(d)) v, out_proj) with the q/k/v branches added to the
  split projections.
- A matrix's sparse entries (mode "sparse", or "indices" on a LoRA layer) become a value
  vector scattered into a zero tensor of the weight's shape and added to it
  (W + scatter(0, idx, vals)), as inject's ConstantOfShape/ScatterND/Add; the entry count
  per matrix is the plan's, the positions random (they do not change the cost).
- Vectors (LayerNorm scale/shift, biases) in the plan are tuned whole (requires_grad on the
  whole tensor: q/k/v biases are one packed in_proj_bias, so that one is counted whole).
- The head is a new Linear(dim, classes), trainable; the class token if the plan tunes it.
"""
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Delta(nn.Module):
    """LoRA branch and/or sparse entries for one weight [out, in] (PyTorch layout)."""

    def __init__(self, out_f, in_f, rank, n_sparse, scaling, dropout, gen):
        super().__init__()
        self.rank = rank
        if rank:
            self.a = nn.Parameter(torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f))
            self.b = nn.Parameter(torch.zeros(out_f, rank))
            self.drop = nn.Dropout(dropout)
            self.scaling = scaling
        self.n_sparse = n_sparse
        if n_sparse:
            self.register_buffer("idx", torch.randperm(out_f * in_f, generator=gen)[:n_sparse].sort().values)
            self.vals = nn.Parameter(torch.zeros(n_sparse))

    def weight(self, w):
        if not self.n_sparse:
            return w
        return w + torch.zeros(w.numel(), dtype=w.dtype).scatter(0, self.idx, self.vals).view_as(w)

    def branch(self, x):
        return F.linear(F.linear(self.drop(x), self.a), self.b) * self.scaling


class DLinear(nn.Module):
    def __init__(self, base, d):
        super().__init__()
        self.base, self.d = base, d

    def forward(self, x):
        y = F.linear(x, self.d.weight(self.base.weight), self.base.bias)
        return y + self.d.branch(x) if self.d.rank else y


class DAttention(nn.Module):
    """nn.MultiheadAttention(batch_first=True) self-attention with q/k/v/proj deltas."""

    def __init__(self, mha, dq, dk, dv, dp, qkv_sparse):
        super().__init__()
        self.mha = mha
        self.dq, self.dk, self.dv, self.dp = dq, dk, dv, dp
        self.qkv_sparse = qkv_sparse  # one Delta over the packed [3D, D] weight, or None

    def forward(self, query, key=None, value=None, need_weights=False):
        x = query
        m = self.mha
        w = m.in_proj_weight if self.qkv_sparse is None else self.qkv_sparse.weight(m.in_proj_weight)
        q, k, v = F.linear(x, w, m.in_proj_bias).chunk(3, dim=-1)
        if self.dq is not None: q = q + self.dq.branch(x)
        if self.dk is not None: k = k + self.dk.branch(x)
        if self.dv is not None: v = v + self.dv.branch(x)
        B, N, D = x.shape
        h = m.num_heads
        q, k, v = (t.reshape(B, N, h, D // h).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax((q / math.sqrt(D // h)) @ k.transpose(-2, -1), dim=-1)
        o_in = (a @ v).transpose(1, 2).reshape(B, N, D)
        wo = m.out_proj.weight if self.dp is None else self.dp.weight(m.out_proj.weight)
        o = F.linear(o_in, wo, m.out_proj.bias)
        if self.dp is not None and self.dp.rank:
            o = o + self.dp.branch(o_in)
        return o, None


def apply(model, plan_path, dropout=0.1):
    plan = json.load(open(plan_path))
    opt = plan["options"]
    scaling = opt.get("lora_scaling", 1.0)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = {}
    for l in plan["layers"]:
        mode = l.get("mode", "")
        n_sp = len(l.get("indices") or [])
        rank = l.get("rank", 0) if mode == "lora" else 0
        if rank or n_sp:
            layers[(l["block"], l["kind"])] = (rank, n_sp)
    blocks = list(model.encoder.layers)
    for i, blk in enumerate(blocks):
        mha = blk.self_attention
        D = mha.embed_dim

        def mk(kind, out_f, in_f, sparse_ok=True):
            rank, n_sp = layers.get((i, kind), (0, 0))
            if not rank and not (n_sp and sparse_ok):
                return None
            return Delta(out_f, in_f, rank, n_sp if sparse_ok else 0, scaling, dropout, gen)

        dq, dk, dv = (mk(k, D, D, sparse_ok=False) for k in ("q", "k", "v"))
        nqkv = sum(layers.get((i, k), (0, 0))[1] for k in ("q", "k", "v"))
        qkv_sparse = Delta(3 * D, D, 0, nqkv, scaling, dropout, gen) if nqkv else None
        dp = mk("proj", D, D)
        if any(d is not None for d in (dq, dk, dv, dp, qkv_sparse)):
            blk.self_attention = DAttention(mha, dq, dk, dv, dp, qkv_sparse)
        fc1, fc2 = blk.mlp[0], blk.mlp[3]
        d1 = mk("fc1", fc1.out_features, fc1.in_features)
        if d1 is not None: blk.mlp[0] = DLinear(fc1, d1)
        d2 = mk("fc2", fc2.out_features, fc2.in_features)
        if d2 is not None: blk.mlp[3] = DLinear(fc2, d2)
    vec = {"norm1.scale": ("ln_1", "weight"), "norm1.shift": ("ln_1", "bias"),
           "norm2.scale": ("ln_2", "weight"), "norm2.shift": ("ln_2", "bias"),
           "q.bias": ("self_attention", "in_proj_bias"), "k.bias": ("self_attention", "in_proj_bias"),
           "v.bias": ("self_attention", "in_proj_bias"), "proj.bias": ("self_attention", "out_proj.bias"),
           "fc1.bias": ("mlp", "0.bias"), "fc2.bias": ("mlp", "3.bias")}
    for v in plan.get("vectors", []):
        if v.get("mode", "none") in ("", "none"):
            continue
        key = ".".join(v["name"].split(".")[-2:])
        if key not in vec:
            continue
        mod_name, pname = vec[key]
        mod = getattr(blocks[v["block"]], mod_name)
        if isinstance(mod, DAttention): mod = mod.mha
        if isinstance(mod, nn.Sequential) and isinstance(mod[int(pname[0])], DLinear):
            mod = mod[int(pname[0])].base; pname = "bias"
        for part in pname.split("."):
            mod = getattr(mod, part)
        mod.requires_grad_(True)
    head = plan.get("head") or {}
    model.heads.head = nn.Linear(model.heads.head.in_features, head.get("classes", 5))
    if plan.get("class_token"):
        model.class_token.requires_grad_(True)
    return plan
