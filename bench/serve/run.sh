#!/usr/bin/env bash
# Issue 5 performance on vit_b_16 with a 0.4M SPT-LoRA plan:
#  1. ONNX Runtime latency, batch 1, 224x224: base vs merged vs sidecar (export/ort from
#     bench/serve, one process, the three sessions run in turn each round; median of RUNS).
#  2. Training images/s: what `sptctl train` does per step (train.Fit's step: SetSeed,
#     ZeroGrad, ForwardBackward, AdamW update in Go for every trainable tensor;
#     bench/engine -trainable marked -adamw) on the injected model vs a PyTorch LoRA loop
#     (bench/engine/torch_fb.py --lora: torchvision vit_b_16 with the plan's LoRA branches,
#     sparse entries and tuned vectors, see bench/engine/lora_plan.py; torch.optim.AdamW),
#     batch 8, 2 threads each, processes alternating Go, PyTorch, ... ROUNDS times.
#
#   WORK=DIR bench/serve/run.sh      # writes bench/RESULTS-serve.md
#
# WORK is a work folder of bench/vitb16/run.sh (plan.json, tunable.onnx, merged.onnx,
# side/); default bench/cache/vitb16-run, made by running bench/vitb16/run.sh there if it
# lacks them (about 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-2}
RUNS=${RUNS:-25}
# Shared machine: sleeping OpenMP waits on both training sides (see bench/engine/run.sh).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
OUTMD=${OUTMD:-bench/RESULTS-serve.md}
PY=/usr/bin/python3
TIME=/usr/bin/time
VIT=bench/cache/vit_b_16.onnx
WORK=${WORK:-bench/cache/vitb16-run}
if [[ ! -f $WORK/merged.onnx || ! -f $WORK/side/fm.onnx ]]; then
	WORK=$WORK OUTMD=${VITB16_OUTMD:-bench/RESULTS-vitb16.md} bench/vitb16/run.sh >&2
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
make -s setup >&2
export SPTCTL_ORT_LIB=${SPTCTL_ORT_LIB:-$PWD/third_party/onnxruntime/libonnxruntime.so.1}
go build -o "$W/serve" ./bench/serve
go build -o "$W/engine" ./bench/engine

echo "ORT latency ($RUNS rounds)..." >&2
$W/serve -runs "$RUNS" -warmup 3 base="$VIT" merged="$WORK/merged.onnx" sidecar="$WORK/side/fm.onnx" >"$W/lat.json"
cat "$W/lat.json" >&2

: >"$W/runs"
one() { # IMPL CMD...
	local impl=$1; shift
	$TIME -f '%e %M' -o "$W/t" "$@" >"$W/j" 2>"$W/e" || { cat "$W/e" >&2; exit 1; }
	echo "$impl $(awk '{printf "%.0f", $2/1024}' "$W/t") $(cat "$W/j")" >>"$W/runs"
	echo "  $impl: $(tail -1 "$W/runs")" >&2
}
for r in $(seq "$ROUNDS"); do
	echo "train round $r" >&2
	one go "$W/engine" -batch 8 -steps 3 -warmup 1 -threads 2 -trainable marked -adamw "$WORK/tunable.onnx"
	one py $PY bench/engine/torch_fb.py --model vit_b_16 --classes 5 --batch 8 --steps 3 --warmup 1 --threads 2 --lora "$WORK/plan.json" --adamw
done

$PY - "$W/lat.json" "$W/runs" "$WORK" "$VIT" <<'PYEOF' | tee "$W/table"
import json, os, statistics as st, sys
lat = json.load(open(sys.argv[1]))
work, vit = sys.argv[3], sys.argv[4]
print("## ONNX Runtime latency, batch 1, 224x224 (median of %d rounds after %d warm-up runs)" % (lat["runs"], lat["warmup"]))
print()
print("| model | file | median ms | p25-p75 ms | / base | target |")
print("|---|---|---:|---:|---:|---|")
tgt = {"base": None, "merged": 1.02, "sidecar": 1.10}
for k in ("base", "merged", "sidecar"):
    r = lat[k]
    t = tgt[k]
    verdict = "" if t is None else ("<= %.2f: %s" % (t, "met" if r["ratio_to_first"] <= t else "NOT met"))
    print(f"| {k} | `{os.path.basename(r['path'])}` | {1e3*r['median_s']:.1f} | {1e3*r['p25_s']:.1f}-{1e3*r['p75_s']:.1f} | {r['ratio_to_first']:.3f} | {verdict} |")
print()
rows = [l.split(" ", 2) for l in open(sys.argv[2])]
res = {"go": [], "py": []}
rss = {"go": 0, "py": 0}
info = {}
for impl, mb, j in rows:
    d = json.loads(j)
    res[impl].append(d["images_per_s"])
    rss[impl] = max(rss[impl], int(mb))
    info[impl] = d
g, p = st.median(res["go"]), st.median(res["py"])
print("## Training, vit_b_16 + 0.4M SPT-LoRA plan, batch 8, 2 threads (median over rounds)")
print()
cpu = {k: st.median(json.loads(j)["cpu_s_per_image"] for i, _, j in rows if i == k) for k in ("go", "py")}
print("| | images/s | CPU-s per image | trainable params (tensors) | peak RSS MB |")
print("|---|---:|---:|---:|---:|")
print(f"| sptctl (train.Fit step) | {g:.3f} | {cpu['go']:.3f} | {info['go']['trainable_params']} ({info['go']['trainable_tensors']}) | {rss['go']} |")
print(f"| PyTorch LoRA loop | {p:.3f} | {cpu['py']:.3f} | {info['py']['trainable_params']} ({info['py']['trainable_tensors']}) | {rss['py']} |")
print()
print(f"CPU work ratio (PyTorch CPU-s per image / sptctl's): {cpu['py']/cpu['go']:.2f}.")
print()
print(f"Ratio sptctl / PyTorch: **{g/p:.2f}** (target >= 0.9: {'met' if g/p >= 0.9 else 'NOT met'}). "
      "Per round: " + ", ".join(f"{i} {x:.3f}" for i in ("go", "py") for x in res[i]))
print()
base = os.path.getsize(os.path.join(work, "side", "base.data"))
task = sum(os.path.getsize(os.path.join(work, "side", f)) for f in os.listdir(os.path.join(work, "side")) if f.startswith("fm."))
print(f"Sidecar task files (fm.onnx + fm.data): {task} bytes = {100*task/base:.3f}% of base.data ({base} bytes); target <= 2%: {'met' if task <= 0.02*base else 'NOT met'}.")
PYEOF
{
	echo "# Serving and LoRA training on vit_b_16 (issue 5, Benchmarks)"
	echo
	echo "Command: \`WORK=DIR bench/serve/run.sh\` (RUNS=$RUNS, ROUNDS=$ROUNDS; $(date -u +%Y-%m-%d), $(nproc) cores,"
	echo "$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')); models from \`bench/vitb16/run.sh\` (random-weight vit_b_16,"
	echo "sensitivity on 2x8 Fashion-MNIST images, \`allocate --budget 0.4M --type lora\`, one training step)."
	echo "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(default)} for the training runs."
	echo "The base model has torchvision's 1000-class head, merged and sidecar the 5-class task head."
	echo "The machine was shared with other benchmarks (load average $(cut -d' ' -f1-3 /proc/loadavg) at the end):"
	echo "the latencies are interleaved round by round and the training runs alternate, so the ratios are the measurement."
	echo
	cat "$W/table"
} >"$OUTMD"
cat "$OUTMD"
