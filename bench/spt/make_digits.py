#!/usr/bin/python3
"""Domain-shift task for the SPT benchmark: scikit-learn's 8x8 handwritten digits
(1,797 images, 10 classes; Debian's python3-sklearn ships them, nothing is downloaded),
upscaled to 28x28 grayscale PNGs in the VTAB-1k list layout that every sptctl command
reads: OUT/images/{train,val,test}/NNNNN.png and train800.txt, val200.txt,
train800val200.txt, test.txt (lines `path LABEL`).

The draw is stratified and seeded: 800 train + 200 val, the other 797 images are test.

Usage: /usr/bin/python3 bench/spt/make_digits.py OUT [--seed 0]
"""
import argparse
import json
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--train", type=int, default=800)
ap.add_argument("--val", type=int, default=200)
a = ap.parse_args()

d = load_digits()
x, y = d.images, d.target  # x: [n, 8, 8] floats in 0..16
rng = np.random.default_rng(a.seed)
n = len(y)
# Stratified split: shuffle each class, then deal its images out in proportion.
order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in range(10)])
# interleave the classes so that any prefix is (nearly) balanced
rank = np.empty(n)
for c in range(10):
    idx = np.flatnonzero(y[order] == c)
    rank[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
order = order[np.argsort(rank, kind="stable")]
splits = {"train": order[: a.train], "val": order[a.train : a.train + a.val], "test": order[a.train + a.val :]}

lists = {}
for name, idx in splits.items():
    os.makedirs(os.path.join(a.out, "images", name), exist_ok=True)
    lines = []
    for j, i in enumerate(idx):
        img = np.clip(x[i] * (255.0 / 16.0), 0, 255).astype(np.uint8)
        # 8x8 -> 28x28, bicubic: smooth strokes, like a low-resolution scan blown up
        im = Image.fromarray(img, mode="L").resize((28, 28), Image.BICUBIC)
        rel = f"images/{name}/{j:05d}.png"
        im.save(os.path.join(a.out, rel))
        lines.append(f"{rel} {int(y[i])}\n")
    lists[name] = lines

def write(fname, lines):
    with open(os.path.join(a.out, fname), "w") as f:
        f.writelines(lines)

write(f"train{a.train}.txt", lists["train"])
write(f"val{a.val}.txt", lists["val"])
write(f"train{a.train}val{a.val}.txt", lists["train"] + lists["val"])
write("test.txt", lists["test"])
with open(os.path.join(a.out, "digits.json"), "w") as f:
    json.dump({"source": "sklearn.datasets.load_digits", "upscale": "8x8 -> 28x28 bicubic, 0..16 -> 0..255",
               "num_classes": 10, "train": a.train, "val": a.val, "test": len(splits["test"]), "seed": a.seed}, f, indent=1)
print(f"wrote {a.out}: {a.train} train, {a.val} val, {len(splits['test'])} test")
