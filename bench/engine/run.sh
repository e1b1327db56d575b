#!/usr/bin/env bash
# Issue 3 and issue 11 performance: forward+backward images/s, CPU time per image and peak
# memory of sptctl's executor (package engine/torch) in fp32 and bf16 mixed precision
# against Debian PyTorch 1.13 eager fp32 and bf16 autocast, same model, same thread count.
#
#   bench/engine/run.sh                    # writes bench/RESULTS-engine.md (ROUNDS=3)
#   ROUNDS=5 MODELS=small bench/engine/run.sh
#   SMALL_STEPS=40 SMALL_WARMUP=3 VIT_STEPS=6 VIT_WARMUP=2   # timed steps / warm-ups per process (defaults)
#   LOAD_NOTE="Nothing else ran." bench/engine/run.sh   # what else ran, for the report
#   REPORT_FROM=RUNS bench/engine/run.sh   # only the report, from a saved runs file
#                                          # (RUNS_COPY=FILE saves one while running)
#
# Models: the small torchvision ViT of models/make_init.py (28x28x1, patch 7, 6 blocks,
# dim 96; batch 64) and torchvision vit_b_16 (bench/make_vit_b16.py; batch 8, 224x224,
# 1000 classes), random weights. Every float initializer / parameter is trainable (full
# fine-tuning); a step is zero-grad + train-mode forward + mean cross-entropy + backward,
# no optimizer. sptctl: bench/engine (Compile + train.Step on a torch.Worker with 2
# libtorch threads; -precision bf16: matrix products and convolutions under libtorch's CPU
# autocast to bfloat16). PyTorch: bench/engine/torch_fb.py (torchvision's
# VisionTransformer rebuilt with the same config, torch.set_num_threads(2); --bf16: the
# forward under torch.autocast("cpu", dtype=torch.bfloat16)). Each measurement is its own
# process under /usr/bin/time (peak RSS = the process's). Per round and model the four
# processes run back to back (sptctl fp32, PyTorch fp32, sptctl bf16, PyTorch bf16; every
# other round in the reverse order); a process reports the median of its timed steps,
# wall and CPU (user+sys of the process over the step). The report gives per
# implementation the median over rounds and the largest peak RSS, and each ratio as the
# median of the per-round ratios (the processes of a round ran under the same load).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
# The machine is shared: with libgomp's default (spin-waiting) barriers, perf showed ~50% of
# both sides' samples in libgomp's spin loop while other processes held the cores. PASSIVE
# makes the waits sleep, on both sides alike; OMP_WAIT_POLICY= (empty) measures the default.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
OUTMD=${OUTMD:-bench/RESULTS-engine.md}
PY=/usr/bin/python3
TIME=/usr/bin/time
VIT=bench/cache/vit_b_16.onnx
SMALL=bench/cache/vit_small28.onnx
THREADS=${THREADS:-2}
MODELS=${MODELS:-small vit_b_16}
SMALL_STEPS=${SMALL_STEPS:-40} SMALL_WARMUP=${SMALL_WARMUP:-3}
VIT_STEPS=${VIT_STEPS:-6} VIT_WARMUP=${VIT_WARMUP:-2}
[[ -x $TIME ]] || { echo "run.sh: $TIME missing (apt-get install time)" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
: >"$W/runs"
LOAD_START=$(uptime)
# the code measured: the commit, and whether the executor or the benchmark differ from it
REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine train bench/engine bench/stepcost inject || echo '+uncommitted changes')
if [[ -n ${REPORT_FROM:-} ]]; then
	cp "$REPORT_FROM" "$W/runs"
	ROUNDS=$(awk '{print $NF}' "$W/runs" | sort -un | wc -l)
	LOAD_START=$(cat "$REPORT_FROM.load" 2>/dev/null || echo "(not saved)")
	REV=$(cat "$REPORT_FROM.rev" 2>/dev/null || echo "(not saved)")
else
	[[ " $MODELS " != *" vit_b_16 "* || -f $VIT ]] || $PY bench/make_vit_b16.py "$VIT" >&2
	[[ " $MODELS " != *" small "* || -f $SMALL ]] || $PY models/make_init.py "$SMALL" >&2
	go build -o "$W/engine" ./bench/engine

	# one MODEL IMPL PRECISION ROUND CMD...: one process; appends
	# "model impl precision images/s cpu_s_per_image peak_MB load1 round" to the runs file.
	one() {
		local model=$1 impl=$2 prec=$3 round=$4 load
		shift 4
		load=$(cut -d' ' -f1 /proc/loadavg)
		$TIME -f '%e %M' -o "$W/t" "$@" >"$W/j" 2>"$W/e" || { cat "$W/e" >&2; exit 1; }
		local ips rss
		ips=$($PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["images_per_s"], d["cpu_s_per_image"])' "$W/j")
		rss=$(awk '{printf "%.0f", $2/1024}' "$W/t")
		echo "$model $impl $prec $ips $rss $load $round" >>"$W/runs"
		echo "  $model $impl $prec: $ips (images/s, CPU-s/image), $rss MB, load $load  $(cat "$W/j")" >&2
	}
	# args MODEL IMPL PRECISION: the command line of one measurement.
	args() {
		local model=$1 impl=$2 prec=$3 path batch steps warm classes
		case $model in
		small) path=$SMALL batch=64 steps=$SMALL_STEPS warm=$SMALL_WARMUP classes=5 ;;
		vit_b_16) path=$VIT batch=8 steps=$VIT_STEPS warm=$VIT_WARMUP classes=1000 ;;
		esac
		if [[ $impl == go ]]; then
			echo "$W/engine -batch $batch -steps $steps -warmup $warm -threads $THREADS -precision $prec $path"
		else
			echo "$PY bench/engine/torch_fb.py --model $model --classes $classes --batch $batch --steps $steps --warmup $warm --threads $THREADS$([[ $prec == bf16 ]] && echo ' --bf16')"
		fi
	}
	for r in $(seq "$ROUNDS"); do
		echo "round $r ($(uptime))" >&2
		order="go:fp32 py:fp32 go:bf16 py:bf16"
		((r % 2)) || order="py:bf16 go:bf16 py:fp32 go:fp32"
		for model in $MODELS; do
			for ip in $order; do
				# shellcheck disable=SC2046
				one "$model" "${ip%:*}" "${ip#*:}" "$r" $(args "$model" "${ip%:*}" "${ip#*:}")
			done
		done
		[[ -z ${RUNS_COPY:-} ]] || { cp "$W/runs" "$RUNS_COPY"; echo "$LOAD_START" >"$RUNS_COPY.load"; echo "$REV" >"$RUNS_COPY.rev"; }
	done
fi
LOAD_END=$(uptime)

$PY - "$W/runs" <<'PYEOF' >"$W/table"
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
R = [dict(model=r[0], impl=r[1], prec=r[2], ips=float(r[3]), cpu=float(r[4]), rss=int(r[5]), load=float(r[6]), round=int(r[7])) for r in rows]
names = {"small": "small ViT 28x28 (patch 7, 6x96), batch 64", "vit_b_16": "vit_b_16 224x224, batch 8"}
label = {("go", "fp32"): "sptctl fp32", ("go", "bf16"): "sptctl bf16", ("py", "fp32"): "PyTorch fp32 eager", ("py", "bf16"): "PyTorch bf16 autocast"}
impls = list(label)

def pick(model, k):
    return [r for r in R if r["model"] == model and (r["impl"], r["prec"]) == k]

def ratio(model, a, b, key, invert):
    """median over rounds of a/b (invert: b/a, for times) within each round."""
    out = []
    for rnd in sorted({r["round"] for r in R}):
        x = [r[key] for r in pick(model, a) if r["round"] == rnd]
        y = [r[key] for r in pick(model, b) if r["round"] == rnd]
        if x and y:
            out.append(y[0] / x[0] if invert else x[0] / y[0])
    return (st.median(out), out) if out else (None, [])

def fmt(v, spread):
    return "-" if v is None else f"{v:.2f} ({', '.join(f'{s:.2f}' for s in spread)})"

for model in ("small", "vit_b_16"):
    if not any(r["model"] == model for r in R):
        continue
    print(f"### {names[model]}")
    print()
    print("| implementation | images/s (median) | CPU-s / image (median) | peak RSS MB (max) | images/s per round | CPU-s / image per round | load (1 min) per process |")
    print("|---|---:|---:|---:|---|---|---|")
    for k in impls:
        rs = sorted(pick(model, k), key=lambda r: r["round"])
        if not rs:
            continue
        ips, cpu = [r["ips"] for r in rs], [r["cpu"] for r in rs]
        print(f"| {label[k]} | {st.median(ips):.2f} | {st.median(cpu):.4f} | {max(r['rss'] for r in rs)} | "
              f"{', '.join(f'{v:.2f}' for v in ips)} | {', '.join(f'{v:.4f}' for v in cpu)} | {', '.join(format(r['load'], '.1f') for r in rs)} |")
    print()
    print("| ratio | by CPU-s / image (median of rounds; per round) | by wall images/s (median of rounds; per round) | target | met (by CPU time) |")
    print("|---|---|---|---|---|")
    checks = [
        (("go", "bf16"), ("py", "fp32"), "speed: sptctl bf16 / PyTorch fp32 eager", 3.0),
        (("go", "bf16"), ("py", "bf16"), "speed: sptctl bf16 / PyTorch bf16 autocast", 1.0),
        (("go", "fp32"), ("py", "fp32"), "speed: sptctl fp32 / PyTorch fp32 eager", 0.9),
        (("go", "bf16"), ("go", "fp32"), "speed: sptctl bf16 / sptctl fp32", None),
        (("py", "bf16"), ("py", "fp32"), "speed: PyTorch bf16 / PyTorch fp32", None),
    ]
    for a, b, what, target in checks:
        c, cs = ratio(model, a, b, "cpu", True)
        w, ws = ratio(model, a, b, "ips", False)
        if c is None:
            continue
        t = "-" if target is None or model != "vit_b_16" and target != 0.9 else f">= {target}"
        met = "-" if t == "-" else ("yes" if c >= target else "**no**")
        print(f"| {what} | {fmt(c, cs)} | {fmt(w, ws)} | {t} | {met} |")
    for a, b, what in ((("go", "bf16"), ("py", "bf16"), "peak RSS: sptctl bf16 / PyTorch bf16 autocast"),
                       (("go", "fp32"), ("py", "fp32"), "peak RSS: sptctl fp32 / PyTorch fp32 eager")):
        ga, gb = pick(model, a), pick(model, b)
        if ga and gb:
            m = max(r["rss"] for r in ga) / max(r["rss"] for r in gb)
            print(f"| {what} | {m:.2f} (max {max(r['rss'] for r in ga)} / {max(r['rss'] for r in gb)} MB) | | <= 1.0 | {'yes' if m <= 1.0 else '**no**'} |")
    print()
PYEOF
{
	echo "# Engine: forward+backward, sptctl fp32 / bf16 vs PyTorch eager fp32 / bf16 autocast (issues 3, 11)"
	echo
	echo "Command: \`ROUNDS=$ROUNDS bench/engine/run.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);"
	echo "$(grep -qw avx512_bf16 /proc/cpuinfo && echo avx512_bf16 || echo 'no avx512_bf16'), $(grep -qw amx_bf16 /proc/cpuinfo && echo amx_bf16 || echo 'no amx_bf16')), $THREADS threads each side,"
	echo "$REV, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(default: spin)} on both sides)."
	echo "Full fine-tuning (all float weights trainable); one step = zero-grad + forward + cross-entropy +"
	echo "backward, one fixed random batch; small: $SMALL_STEPS timed steps after $SMALL_WARMUP warm-ups, vit_b_16: $VIT_STEPS after $VIT_WARMUP. Per round and"
	echo "model the four processes ran back to back (the order reversed every other round). Peak RSS: the"
	echo "process's (/usr/bin/time)."
	echo
	echo "**Load.** ${LOAD_NOTE:-What else ran on the machine was not recorded (LOAD_NOTE says).}"
	echo "uptime at the start: \`$LOAD_START\`; at the end: \`$LOAD_END\`; the 1-minute load before each"
	echo "process is in the tables. Wall-clock images/s therefore measures the share of the cores a process"
	echo "got as much as its speed; **the ratios against the targets use CPU-s per image** (the process's"
	echo "user+sys CPU time of its median step over the batch, OMP_WAIT_POLICY=PASSIVE so waiting threads"
	echo "sleep instead of burning CPU), which other processes disturb far less. Wall ratios are given beside"
	echo "them. Every ratio is the median of the per-round ratios (one per round, in parentheses)."
	echo
	cat "$W/table"
} >"$OUTMD"
cat "$OUTMD"
