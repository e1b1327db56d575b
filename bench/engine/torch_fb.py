#!/usr/bin/python3
"""PyTorch eager reference for bench/engine and bench/serve: forward + cross-entropy +
backward (and optionally an AdamW step) on a torchvision VisionTransformer, one fixed
random batch, timing STEPS steps after WARMUP. Prints one JSON line.

  /usr/bin/python3 bench/engine/torch_fb.py --model small|vit_b_16 [--batch 64] [--steps 10]
      [--threads 2] [--lora PLAN.json] [--adamw] [--bf16] [--profile FILE]

small: VisionTransformer(28, patch 7, 6 layers, 3 heads, dim 96, mlp 384, 5 classes) with a
1-channel conv_proj, as models/make_init.py. vit_b_16: torchvision.models.vit_b_16().
Random weights (the same shapes and ops as the ONNX models sptctl runs, not the same
values). Train mode; torchvision's ViT has dropout 0, so train == eval numerically.
--lora PLAN: freeze everything and apply an `sptctl allocate` plan with bench/engine/lora_plan.py
(LoRA branches, sparse entries, vectors, new head); only those are trainable.
--bf16: the forward runs under torch.autocast("cpu", dtype=torch.bfloat16) (mixed precision:
matrix products in bfloat16, weights and gradients fp32); the loss is taken in fp32.
--profile FILE: PyTorch's operator profiler over the timed steps, one tab-separated line per
operator and input shapes (self ms, total ms, calls, operator, shapes), as bench/engine
-torchprofile writes, to compare the two op by op.
"""
import argparse, json, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.vision_transformer import VisionTransformer


def build(name, classes):
    torch.manual_seed(0)
    if name == "small":
        m = VisionTransformer(image_size=28, patch_size=7, num_layers=6, num_heads=3, hidden_dim=96, mlp_dim=384, num_classes=classes)
        m.conv_proj = nn.Conv2d(1, 96, kernel_size=7, stride=7)
        return m, (1, 28, 28)
    m = torchvision.models.vit_b_16(weights=None, num_classes=classes)
    return m, (3, 224, 224)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--lora", default="")
    ap.add_argument("--adamw", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="forward under torch.autocast('cpu', dtype=torch.bfloat16)")
    ap.add_argument("--profile", default="", help="write per-operator times of the timed steps here (bench/engine -torchprofile's format)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    m, shape = build(a.model, a.classes)
    if a.lora:
        import lora_plan
        lora_plan.apply(m, a.lora)
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    ntrain = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4) if a.adamw else None
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, *shape, generator=g)
    y = torch.arange(a.batch) % a.classes
    build_s = time.time() - t0

    def step():
        if opt is not None:
            opt.zero_grad(set_to_none=False)
        else:
            for p in params:
                p.grad = None if p.grad is None else p.grad.zero_()
        if a.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = m(x)
            loss = F.cross_entropy(out.float(), y)
        else:
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        if opt is not None:
            opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    prof = None
    if a.profile:
        prof = torch.autograd.profiler.profile(record_shapes=True)
        prof.__enter__()
    times, cpus = [], []
    t = time.perf_counter()
    for _ in range(a.steps):
        s, c = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - s)
        cpus.append(time.process_time() - c)
    cpus.sort()
    total = time.perf_counter() - t
    if prof is not None:
        prof.__exit__(None, None, None)
        rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        with open(a.profile, "w") as f:
            f.write("self_ms\ttotal_ms\tcalls\top\tinput_shapes\n")
            for e in rows:
                shapes = str(e.input_shapes).replace("[]", "[]")
                f.write(f"{e.self_cpu_time_total / 1000:g}\t{e.cpu_time_total / 1000:g}\t{e.count}\t{e.key}\t{shapes}\n")
    times.sort()
    print(json.dumps({"impl": "pytorch", "precision": "bf16" if a.bf16 else "fp32", "batch": a.batch, "steps": a.steps, "threads": torch.get_num_threads(),
                      "trainable_params": ntrain, "trainable_tensors": len(params), "compile_s": build_s,
                      "step_median_s": times[len(times) // 2], "images_per_s": a.batch / times[len(times) // 2],
                      "images_per_s_mean": a.batch * a.steps / total, "loss": loss,
                      "cpu_step_median_s": cpus[len(cpus) // 2], "cpu_s_per_image": cpus[len(cpus) // 2] / a.batch}))


if __name__ == "__main__":
    sys.exit(main())
