#!/usr/bin/python3
"""Write the small ViT ONNX fixtures in this folder with PyTorch's own exporter.

Run with Debian's python (torch 1.13, torchvision 0.14, onnx 1.12):

    /usr/bin/python3 testdata/make_fixtures.py

Deterministic: fixed seeds, one thread; running it twice gives byte-identical files.
For every fixture NAME it writes NAME.onnx, NAME.json (ground truth taken from the
PyTorch module), NAME.input.npy and NAME.output.npy (PyTorch's eval-mode output for
that input). It then checks each graph with onnx.checker (full_check) and runs it with
the small numpy interpreter below (no onnxruntime here) against NAME.output.npy.
"""

import json
import math
import os
import sys
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
import torchvision
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))

torch.set_num_threads(1)
warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------- models

def torchvision_vit(channels, image_size, patch_size, dim, heads, mlp_dim, classes):
    m = torchvision.models.vision_transformer.VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=2, num_heads=heads,
        hidden_dim=dim, mlp_dim=mlp_dim, num_classes=classes)
    if channels != 3:
        m.conv_proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
    return m


class TimmAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        # timm.models.vision_transformer.Attention (non-fused path)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class TimmMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class TimmBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TimmAttention(dim, heads)
        self.ls1 = nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TimmMlp(dim, mlp_dim)
        self.ls2 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class TimmPatchEmbed(nn.Module):
    def __init__(self, channels, patch_size, dim):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        x = self.proj(x)
        x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        return self.norm(x)


class TimmViT(nn.Module):
    """timm.models.vision_transformer.VisionTransformer, global_pool='token'."""

    def __init__(self, channels, image_size, patch_size, dim, heads, mlp_dim, classes):
        super().__init__()
        n = (image_size // patch_size) ** 2
        self.patch_embed = TimmPatchEmbed(channels, patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.norm_pre = nn.Identity()
        self.blocks = nn.Sequential(*[TimmBlock(dim, heads, mlp_dim) for _ in range(2)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(dim, classes)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        x = self.pos_drop(x)
        x = self.norm_pre(x)
        x = self.blocks(x)
        x = self.norm(x)
        x = x[:, 0]
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return self.head(x)


class HFSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = dim // heads
        self.all_head_size = dim
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.0)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states):
        mixed_query_layer = self.query(hidden_states)
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        query_layer = self.transpose_for_scores(mixed_query_layer)
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        return context_layer.view(new_context_layer_shape)


class HFSelfOutput(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.0)

    def forward(self, hidden_states):
        return self.dropout(self.dense(hidden_states))


class HFAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attention = HFSelfAttention(dim, heads)
        self.output = HFSelfOutput(dim)

    def forward(self, hidden_states):
        return self.output(self.attention(hidden_states))


class HFIntermediate(nn.Module):
    def __init__(self, dim, mlp_dim):
        super().__init__()
        self.dense = nn.Linear(dim, mlp_dim)
        self.intermediate_act_fn = nn.GELU()  # transformers' GELUActivation = F.gelu

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class HFOutput(nn.Module):
    def __init__(self, dim, mlp_dim):
        super().__init__()
        self.dense = nn.Linear(mlp_dim, dim)
        self.dropout = nn.Dropout(0.0)

    def forward(self, hidden_states, input_tensor):
        return self.dropout(self.dense(hidden_states)) + input_tensor


class HFLayer(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.attention = HFAttention(dim, heads)
        self.intermediate = HFIntermediate(dim, mlp_dim)
        self.output = HFOutput(dim, mlp_dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, hidden_states):
        attention_output = self.attention(self.layernorm_before(hidden_states))
        hidden_states = attention_output + hidden_states
        layer_output = self.layernorm_after(hidden_states)
        layer_output = self.intermediate(layer_output)
        return self.output(layer_output, hidden_states)


class HFEncoder(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.layer = nn.ModuleList([HFLayer(dim, heads, mlp_dim) for _ in range(2)])

    def forward(self, hidden_states):
        for layer in self.layer:
            hidden_states = layer(hidden_states)
        return hidden_states


class HFPatchEmbeddings(nn.Module):
    def __init__(self, channels, patch_size, dim):
        super().__init__()
        self.projection = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values):
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class HFEmbeddings(nn.Module):
    def __init__(self, channels, image_size, patch_size, dim):
        super().__init__()
        n = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.patch_embeddings = HFPatchEmbeddings(channels, patch_size, dim)
        self.position_embeddings = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.dropout = nn.Dropout(0.0)

    def forward(self, pixel_values):
        batch_size = pixel_values.shape[0]
        embeddings = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        embeddings = embeddings + self.position_embeddings
        return self.dropout(embeddings)


class HFViTModel(nn.Module):
    def __init__(self, channels, image_size, patch_size, dim, heads, mlp_dim):
        super().__init__()
        self.embeddings = HFEmbeddings(channels, image_size, patch_size, dim)
        self.encoder = HFEncoder(dim, heads, mlp_dim)
        self.layernorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, pixel_values):
        return self.layernorm(self.encoder(self.embeddings(pixel_values)))


class HFViTForImageClassification(nn.Module):
    def __init__(self, channels, image_size, patch_size, dim, heads, mlp_dim, classes):
        super().__init__()
        self.vit = HFViTModel(channels, image_size, patch_size, dim, heads, mlp_dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, pixel_values):
        sequence_output = self.vit(pixel_values)
        return self.classifier(sequence_output[:, 0, :])


# --------------------------------------------------------------------------- fixtures

FIXTURES = [
    # name, style, opset, batch (None = dynamic), folding, channels, image, patch, dim, heads, mlp
    ("tv_op14_static", "torchvision", 14, 2, True, 1, 28, 7, 32, 2, 64),
    ("tv_op17_dynamic", "torchvision", 17, None, True, 3, 32, 8, 48, 3, 96),
    ("tv_op13_nofold", "torchvision", 13, None, False, 1, 28, 7, 32, 4, 128),
    ("tv_op17_static_b1", "torchvision", 17, 1, True, 3, 32, 8, 32, 2, 64),
    ("timm_op17", "timm", 17, None, True, 3, 32, 8, 32, 4, 128),
    ("timm_op14", "timm", 14, 2, True, 1, 28, 7, 32, 2, 64),
    ("hf_op17", "hf", 17, None, True, 3, 32, 8, 48, 4, 96),
    ("tv_op17_alias", "torchvision", 17, None, True, 1, 28, 7, 32, 2, 64),
]
# Fixtures that keep the module's own initialization (torchvision's: zero biases, unit
# LayerNorm scales, zero class token) instead of the noise that build() adds, so the
# exporter de-duplicates the identical tensors into one initializer each and re-exposes
# them through Identity nodes. Only the head weight is made non-zero.
DEFAULT_INIT = {"tv_op17_alias"}
CLASSES = 10
BLOCKS = 2


def build(style, channels, image, patch, dim, heads, mlp, default_init=False):
    if style == "torchvision":
        m = torchvision_vit(channels, image, patch, dim, heads, mlp, CLASSES)
        head = m.heads.head
        if default_init:
            with torch.no_grad():
                # The replaced 1-channel patch embedding gets torchvision's own
                # conv_proj init (VisionTransformer.__init__), zero bias included.
                c = m.conv_proj
                fan_in = c.in_channels * c.kernel_size[0] * c.kernel_size[1]
                nn.init.trunc_normal_(c.weight, std=math.sqrt(1 / fan_in))
                nn.init.zeros_(c.bias)
                # torchvision zero-inits the head: make its weight non-zero, keep its
                # zero bias (one more alias of the shared zero tensor).
                nn.init.normal_(head.weight, std=0.02)
            return m
    elif style == "timm":
        m = TimmViT(channels, image, patch, dim, heads, mlp, CLASSES)
        head = m.head
    else:
        m = HFViTForImageClassification(channels, image, patch, dim, heads, mlp, CLASSES)
        head = m.classifier
    with torch.no_grad():
        # torchvision zero-inits the head: give every fixture a non-zero one.
        nn.init.normal_(head.weight, std=0.02)
        nn.init.normal_(head.bias, std=0.02)
        # Nothing trivially zero or one: noise on every LayerNorm and every bias.
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.add_(torch.randn_like(mod.weight) * 0.1)
                mod.bias.add_(torch.randn_like(mod.bias) * 0.1)
        ln = {id(p) for mod in m.modules() if isinstance(mod, nn.LayerNorm) for p in mod.parameters()}
        hd = {id(p) for p in head.parameters()}
        for name, p in m.named_parameters():
            if name.endswith("bias") and id(p) not in ln and id(p) not in hd:
                p.add_(torch.randn_like(p) * 0.02)
            if name in ("class_token", "cls_token", "vit.embeddings.cls_token"):
                p.add_(torch.randn_like(p) * 0.02)
    return m


def layer_list(dim, mlp, fused):
    out = []
    for b in range(BLOCKS):
        for op in ("q", "k", "v"):
            out.append({"block": b, "op": op, "in": dim, "out": dim, "fused": fused})
        out.append({"block": b, "op": "proj", "in": dim, "out": dim, "fused": False})
        out.append({"block": b, "op": "fc1", "in": dim, "out": mlp, "fused": False})
        out.append({"block": b, "op": "fc2", "in": mlp, "out": dim, "fused": False})
    return out


def make(idx, spec):
    name, style, opset, batch, folding, ch, image, patch, dim, heads, mlp = spec
    torch.manual_seed(1000 + idx)
    m = build(style, ch, image, patch, dim, heads, mlp, default_init=name in DEFAULT_INIT).eval()
    # Parameters keep requires_grad=True and export runs with grad enabled, as when a
    # user exports a model: otherwise nn.MultiheadAttention takes its fast path
    # (aten::_native_multi_head_attention), which the exporter cannot write.

    n = batch if batch is not None else 2
    g = torch.Generator().manual_seed(2000 + idx)
    x = torch.randn(n, ch, image, image, generator=g, dtype=torch.float32)
    with torch.no_grad():
        y = m(x)

    path = os.path.join(HERE, name + ".onnx")
    dyn = None
    if batch is None:
        dyn = {"input": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(
        m, (x,), path,
        export_params=True, opset_version=opset, do_constant_folding=folding,
        input_names=["input"], output_names=["logits"], dynamic_axes=dyn,
        training=torch.onnx.TrainingMode.EVAL, verbose=False)

    np.save(os.path.join(HERE, name + ".input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(HERE, name + ".output.npy"), y.numpy().astype(np.float32))
    truth = {
        "opset": opset,
        "batch": batch,
        "channels": ch,
        "image_size": image,
        "patch_size": patch,
        "dim": dim,
        "heads": heads,
        "mlp_dim": mlp,
        "classes": CLASSES,
        "blocks": BLOCKS,
        "layers": layer_list(dim, mlp, style in ("torchvision", "timm")),
        "head": {"in": dim, "out": CLASSES},
        "params": int(sum(p.numel() for p in m.parameters())),
        "style": style,
        "folding": folding,
    }
    with open(os.path.join(HERE, name + ".json"), "w") as f:
        json.dump(truth, f, indent=1)
        f.write("\n")
    return path, x.numpy(), y.numpy()


# --------------------------------------------------------------------------- checks
# onnx 1.12 has no onnx.reference and onnxruntime is not installed for this python, so
# the exported graphs are executed by this small numpy interpreter (only the ops the
# exporter writes for these models).

def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def run_numpy(model, feeds):
    env = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    env.update(feeds)
    for node in model.graph.node:
        a = _attrs(node)
        i = [env[n] if n else None for n in node.input]
        op = node.op_type
        if op == "Constant":
            r = [numpy_helper.to_array(a["value"])]
        elif op == "Identity":
            r = [i[0]]
        elif op in ("Add", "Sub", "Mul", "Div", "Pow", "Equal"):
            f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
                 "Pow": np.power, "Equal": np.equal}[op]
            r = [f(i[0], i[1]).astype(np.result_type(i[0]) if op != "Equal" else bool)]
        elif op == "Sqrt":
            r = [np.sqrt(i[0])]
        elif op == "Erf":
            r = [_erf(i[0])]
        elif op == "MatMul":
            r = [np.matmul(i[0], i[1])]
        elif op == "Gemm":
            A, B = i[0], i[1]
            if a.get("transA", 0):
                A = A.T
            if a.get("transB", 0):
                B = B.T
            y = a.get("alpha", 1.0) * (A @ B)
            if len(i) > 2 and i[2] is not None:
                y = y + a.get("beta", 1.0) * i[2]
            r = [y.astype(np.float32)]
        elif op == "Conv":
            X, W = i[0], i[1]
            k = W.shape[2]
            s = a.get("strides", [1, 1])[0]
            assert a.get("pads", [0, 0, 0, 0]) == [0, 0, 0, 0] and s == k and a.get("group", 1) == 1
            N, C, H, Wd = X.shape
            oh, ow = H // k, Wd // k
            patches = X[:, :, :oh * k, :ow * k].reshape(N, C, oh, k, ow, k).transpose(0, 2, 4, 1, 3, 5)
            y = patches.reshape(N, oh, ow, C * k * k) @ W.reshape(W.shape[0], -1).T
            if len(i) > 2:
                y = y + i[2]
            r = [y.transpose(0, 3, 1, 2).astype(np.float32)]
        elif op == "Reshape":
            shape = [int(s) for s in i[1]]
            shape = [i[0].shape[d] if s == 0 else s for d, s in enumerate(shape)]
            r = [i[0].reshape(shape)]
        elif op == "Flatten":
            ax = a.get("axis", 1)
            r = [i[0].reshape(int(np.prod(i[0].shape[:ax])), -1)]
        elif op == "Transpose":
            r = [np.transpose(i[0], a.get("perm"))]
        elif op == "Shape":
            r = [np.array(i[0].shape, dtype=np.int64)]
        elif op == "Gather":
            r = [np.take(i[0], i[1], axis=a.get("axis", 0))]
        elif op == "Unsqueeze":
            axes = a["axes"] if "axes" in a else [int(v) for v in i[1]]
            y = i[0]
            for ax in sorted(ax % (y.ndim + len(axes)) for ax in axes):
                y = np.expand_dims(y, ax)
            r = [y]
        elif op == "Squeeze":
            axes = a["axes"] if "axes" in a else [int(v) for v in i[1]]
            r = [np.squeeze(i[0], axis=tuple(axes))]
        elif op == "Concat":
            r = [np.concatenate(i, axis=a["axis"])]
        elif op == "ConstantOfShape":
            v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            r = [np.full([int(s) for s in i[0]], v.reshape(-1)[0], dtype=v.dtype)]
        elif op == "Expand":
            shape = np.broadcast_shapes(i[0].shape, tuple(int(s) for s in i[1]))
            r = [np.broadcast_to(i[0], shape).copy()]
        elif op == "Where":
            r = [np.where(i[0], i[1], i[2])]
        elif op == "Cast":
            to = onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[a["to"]]
            r = [i[0].astype(to)]
        elif op == "Slice":
            x = i[0]
            starts, ends = i[1], i[2]
            axes = i[3] if len(i) > 3 and i[3] is not None else range(len(starts))
            steps = i[4] if len(i) > 4 and i[4] is not None else [1] * len(starts)
            sl = [slice(None)] * x.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                sl[int(ax)] = slice(int(s), int(min(e, np.iinfo(np.int64).max)), int(st))
            r = [x[tuple(sl)]]
        elif op == "Split":
            ax = a.get("axis", 0)
            sizes = a.get("split") or ([int(v) for v in i[1]] if len(i) > 1 and i[1] is not None
                                       else [i[0].shape[ax] // len(node.output)] * len(node.output))
            r = np.split(i[0], np.cumsum(sizes)[:-1], axis=ax)
        elif op == "Softmax":
            ax = a.get("axis", -1)
            e = np.exp(i[0] - i[0].max(axis=ax, keepdims=True))
            r = [e / e.sum(axis=ax, keepdims=True)]
        elif op == "ReduceMean":
            r = [i[0].mean(axis=tuple(a["axes"]), keepdims=bool(a.get("keepdims", 1)))]
        elif op == "LayerNormalization":
            ax = a.get("axis", -1)
            axes = tuple(range(ax % i[0].ndim, i[0].ndim))
            mu = i[0].mean(axis=axes, keepdims=True)
            var = ((i[0] - mu) ** 2).mean(axis=axes, keepdims=True)
            y = (i[0] - mu) / np.sqrt(var + a.get("epsilon", 1e-5)) * i[1]
            if len(i) > 2 and i[2] is not None:
                y = y + i[2]
            r = [y.astype(np.float32)]
        else:
            raise NotImplementedError(op)
        for n, v in zip(node.output, r):
            env[n] = np.asarray(v)
    return [env[o.name] for o in model.graph.output]


def describe(model):
    g = model.graph
    ops = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    inits = [(t.name, list(t.dims)) for t in g.initializer]
    return ops, inits


def main():
    quiet = "-q" in sys.argv
    results = []
    for idx, spec in enumerate(FIXTURES):
        path, x, y = make(idx, spec)
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        batch = spec[3]
        feed = x[:1] if batch == 1 else x
        got = run_numpy(model, {"input": feed})[0]
        err = float(np.abs(got - y).max())
        if not err < 1e-4:
            raise SystemExit(f"{spec[0]}: numpy run of the ONNX graph differs from torch by {err}")
        if batch is None:  # the dynamic axis really is dynamic
            got1 = run_numpy(model, {"input": x[:1]})[0]
            err = max(err, float(np.abs(got1 - y[:1]).max()))
            if not err < 1e-4:
                raise SystemExit(f"{spec[0]}: batch-1 run differs from torch by {err}")
        ops, _ = describe(model)
        results.append((spec[0], os.path.getsize(path), err, ops))
    if not quiet:
        for name, size, err, ops in results:
            print(f"{name}.onnx {size} bytes, max |onnx-torch| {err:.2e}, ops {ops}")


if __name__ == "__main__":
    main()
