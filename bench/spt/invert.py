#!/usr/bin/python3
"""Inverted-intensity task for the SPT benchmark: copies a VTAB-1k list folder (from
`sptctl data fewshot`) with every image replaced by 255 - x (light clothes on a dark
background become dark on light). Lists and labels are copied unchanged.

Usage: /usr/bin/python3 bench/spt/invert.py SRC OUT
"""
import os
import shutil
import sys

import numpy as np
from PIL import Image

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
n = 0
for f in sorted(os.listdir(src)):
    p = os.path.join(src, f)
    if os.path.isfile(p) and (f.endswith(".txt") or f.endswith(".json")):
        shutil.copy(p, os.path.join(out, f))
for root, _, files in os.walk(os.path.join(src, "images")):
    rel = os.path.relpath(root, src)
    os.makedirs(os.path.join(out, rel), exist_ok=True)
    for f in files:
        if not f.endswith(".png"):
            continue
        im = np.asarray(Image.open(os.path.join(root, f)).convert("L"))
        Image.fromarray(255 - im, mode="L").save(os.path.join(out, rel, f))
        n += 1
with open(os.path.join(out, "invert.json"), "w") as f:
    f.write('{"from": "%s", "transform": "255 - x"}\n' % src)
print(f"wrote {out}: {n} inverted images")
