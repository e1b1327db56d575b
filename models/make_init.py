#!/usr/bin/python3
"""Writes the built-in backbone's starting point: a randomly initialised torchvision
VisionTransformer for 28x28 grayscale images (patch 7, 6 blocks, hidden 96, 3 heads,
MLP 384, 5 classes), exported by PyTorch's own ONNX exporter (opset 17, dynamic batch),
the way a user's model is made. `make backbone` then pre-trains it with sptctl.

Usage: /usr/bin/python3 models/make_init.py OUT.onnx
"""
import sys

import torch
from torchvision.models.vision_transformer import VisionTransformer

torch.manual_seed(0)
torch.set_num_threads(1)
m = VisionTransformer(image_size=28, patch_size=7, num_layers=6, num_heads=3, hidden_dim=96, mlp_dim=384, num_classes=5)
m.conv_proj = torch.nn.Conv2d(1, 96, kernel_size=7, stride=7)
# torchvision zero-initialises the head; training from zeros works, but a small
# random head makes the first steps informative.
torch.nn.init.normal_(m.heads.head.weight, std=0.02)
m.eval()
x = torch.randn(2, 1, 28, 28)
# Exporting nn.MultiheadAttention needs grad mode on (its fast path has no ONNX form).
torch.onnx.export(m, x, sys.argv[1], opset_version=17, input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
print(sys.argv[1], sum(p.numel() for p in m.parameters()), "parameters")
