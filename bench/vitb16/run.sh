#!/usr/bin/env bash
# Full-size run (issue 6, part 5): every sptctl stage on torchvision vit_b_16 (random
# weights, 224x224) with a handful of Fashion-MNIST images (28x28 grayscale, which
# sptctl's preprocessing resizes to 224 and repeats to 3 channels).
#
#   bench/vitb16/run.sh [MODEL]        # writes bench/RESULTS-vitb16.md
#
# Each stage is one `sptctl` process (built from this tree) under /usr/bin/time -v: wall time and peak
# RSS of that process. Stages: data (two few-shot folders: 16 train images for
# sensitivity = 2 batches of 8, and 8 train images so that `train --epochs 1
# --batch-size 8` is exactly one optimizer step), inspect, sensitivity, allocate 0.4M
# SPT-LoRA, inject, train, export merged, export sidecar, eval of both on 16 test
# images. The machine may be shared: single runs, no repetition (the stages are long).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-bench/cache/vit_b_16.onnx}
OUTMD=${OUTMD:-bench/RESULTS-vitb16.md}
PY=/usr/bin/python3
TIME=/usr/bin/time
# REPORT_ONLY=1 WORK=DIR: only rewrite the table from a finished run's folder.
[[ -x $TIME ]] || { echo "run.sh: $TIME missing (apt-get install time)" >&2; exit 1; }
[[ -f $MODEL ]] || $PY bench/make_vit_b16.py "$MODEL" >&2
W=${WORK:-$(mktemp -d)}
[[ -n ${WORK:-} ]] || trap 'rm -rf "$W"' EXIT
mkdir -p "$W"
# A private copy of the binary (others may rebuild or clean bin/ meanwhile).
make -s setup >&2
export SPTCTL_ORT_LIB=${SPTCTL_ORT_LIB:-$PWD/third_party/onnxruntime/libonnxruntime.so.1}
CGO_ENABLED=1 go build -o "$W/sptctl" ./cmd/sptctl
S=$W/sptctl

stage() { # NAME CMD... ; appends "NAME wall_s peak_MB" to rows
	local name=$1; shift
	echo "== $name: $*" >&2
	if ! $TIME -v -o "$W/$name.time" "$@" >"$W/$name.out" 2>"$W/$name.err"; then
		echo "stage $name failed:" >&2; tail -20 "$W/$name.err" >&2; cat "$W/$name.time" >&2; exit 1
	fi
	echo "   $name: $(row "$name")" >&2
}
row() { # NAME -> "wall_s peak_MB" from NAME.time
	local name=$1 wall rss cpu
	wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$W/$name.time")
	rss=$(awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$W/$name.time")
	cpu=$(awk -F': ' '/User time|System time/{s+=$2} END{printf "%.1f", s}' "$W/$name.time")
	echo "$wall $rss $cpu"
}

if [[ -z ${REPORT_ONLY:-} ]]; then
stage data $S data fewshot --classes 0-4 --train 16 --val 8 --test 16 --seed 0 --out "$W/fm16"
$S data fewshot --classes 0-4 --train 8 --val 8 --test 16 --seed 0 --out "$W/fm8" >/dev/null 2>&1
stage inspect $S inspect "$MODEL"
stage sensitivity $S sensitivity --model "$MODEL" --data "$W/fm16" --batches 2 --batch-size 8 --out "$W/scores.safetensors"
stage allocate $S allocate --model "$MODEL" --scores "$W/scores.safetensors" --budget 0.4M --type lora --out "$W/plan.json"
stage inject $S inject --model "$MODEL" --plan "$W/plan.json" --out "$W/tunable.onnx"
stage train $S train --model "$W/tunable.onnx" --data "$W/fm8" --epochs 1 --batch-size 8 --warmup 0 --val-split val --out "$W/trained.onnx"
stage export_merged $S export --model "$W/trained.onnx" --base "$MODEL" --merge --out "$W/merged.onnx" --samples 2
stage export_sidecar $S export --model "$W/trained.onnx" --base "$MODEL" --sidecar "$W/side" --task fm --samples 2
stage eval_merged $S eval --model "$W/merged.onnx" --data "$W/fm16" --split test --batch-size 8
stage eval_sidecar $S eval --model "$W/side/fm.onnx" --data "$W/fm16" --split test --batch-size 8

fi
for n in data inspect sensitivity allocate inject train export_merged export_sidecar eval_merged eval_sidecar; do
	echo "$n $(row $n)"
done >"$W/rows"
base=$(stat -c %s "$W/side/base.data")
task=0; for f in "$W"/side/fm.*; do task=$((task + $(stat -c %s "$f"))); done
trainable=$(grep -o '"trainable[a-z_]*": *[0-9]*' "$W/train.out" "$W/allocate.out" 2>/dev/null | head -1 || true)
{
	echo "# Full-size run: every stage on vit_b_16 (issue 6, part 5)"
	echo
	echo "Command: \`bench/vitb16/run.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'))."
	echo "Model: \`$MODEL\` ($(stat -c %s "$MODEL") bytes), torchvision vit_b_16 with random weights, 224x224."
	echo "Each stage is one \`sptctl\` process (a private build of this tree) under \`/usr/bin/time -v\` (wall, peak RSS), run once;"
	echo "the 2-core machine was shared with another benchmark, so wall times are upper bounds (CPU time"
	echo "shows the work itself; 2 cores give at most 2 CPU-s per wall-s). OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(unset: libgomp spins)};"
	echo "see RESULTS-engine.md: with other processes on the cores, spinning waits cost both libtorch and PyTorch about half their CPU."
	echo
	echo "| stage | command | wall (s) | CPU user+sys (s) | peak RSS (MB) |"
	echo "|---|---|---:|---:|---:|"
	while read -r n w r c; do
		case $n in
		data) k='data fewshot --classes 0-4 --train 16 --val 8 --test 16' ;;
		inspect) k='inspect' ;;
		sensitivity) k='sensitivity --batches 2 --batch-size 8' ;;
		allocate) k='allocate --budget 0.4M --type lora (SPT-LoRA)' ;;
		inject) k='inject' ;;
		train) k='train --epochs 1 --batch-size 8 --warmup 0 (8 images: 1 step, + val 8)' ;;
		export_merged) k='export --merge (parity check on 2 inputs)' ;;
		export_sidecar) k='export --sidecar (parity check on 2 inputs)' ;;
		eval_merged) k='eval merged, 16 test images' ;;
		eval_sidecar) k='eval sidecar, 16 test images' ;;
		esac
		echo "| $n | \`$k\` | $w | $c | $r |"
	done <"$W/rows"
	echo
	echo "Sidecar: task files \`fm.onnx\` + \`fm.data\` = $task bytes; shared \`base.data\` = $base bytes;"
	echo "ratio $(awk -v t=$task -v b=$base 'BEGIN{printf "%.3f%%", 100*t/b}') (target <= 2%: $(awk -v t=$task -v b=$base 'BEGIN{print (t<=0.02*b)?"met":"NOT met"}'))."
	echo
	echo "Train: $(head -1 "$W/train.out")  "
	echo "Eval merged: $(head -1 "$W/eval_merged.out")  "
	echo "Eval sidecar: $(head -1 "$W/eval_sidecar.out")"
	echo
	echo "Sidecar folder:"
	echo
	ls -l "$W/side" | tail -n +2 | awk '{print "    " $5 "  " $9}'
	echo
	echo "Plan (\`sptctl allocate\` output):"
	echo
	sed 's/^/    /' "$W/allocate.out"
} | tee "$OUTMD"
