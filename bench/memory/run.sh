#!/usr/bin/env bash
# Peak memory of sptctl against PyTorch on vit_b_16 (issue 11, item 3):
#
#   bench/memory/run.sh [MODEL]        # writes bench/RESULTS-memory.md (OUTMD=...)
#
# Each row is one process under /usr/bin/time -v (Maximum resident set size); the
# sensitivity and PyTorch rows run ROUNDS times (default 3), interleaved, and show the
# median and the range (PyTorch's own peak moves by a few hundred MB between runs):
#   - sptctl sensitivity --batches 2 --batch-size 8, --precision fp32 and bf16;
#   - PyTorch 1.13 (/usr/bin/python3, bench/engine/torch_fb.py): torchvision vit_b_16, one
#     forward + cross-entropy + backward of a batch of 8 at 224x224 (5 classes), fp32 and
#     bf16 autocast: what one sensitivity batch costs PyTorch;
#   - sptctl export --merge of a trained model (allocate 0.4M SPT-LoRA, inject, train one
#     step of 8 images), against the model file's size (target: at most 3x).
# The model is torchvision's vit_b_16 with random weights (bench/make_vit_b16.py, no
# downloads); the images are a Fashion-MNIST few-shot folder (`sptctl data fewshot`).
# Needs `make setup` done. Run it alone (under flock /tmp/sptctl-heavy.lock on a shared machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-bench/cache/vit_b_16.onnx}
OUTMD=${OUTMD:-bench/RESULTS-memory.md}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
# the tree the numbers are for (before the report below changes it)
REV="$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
PY=/usr/bin/python3
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "run.sh: $TIME missing (apt-get install time)" >&2; exit 1; }
[[ -f $MODEL ]] || $PY bench/make_vit_b16.py "$MODEL" >&2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export OMP_WAIT_POLICY=PASSIVE
export SPTCTL_ORT_LIB=${SPTCTL_ORT_LIB:-$PWD/third_party/onnxruntime/libonnxruntime.so.1}
CGO_ENABLED=1 go build -o "$W/sptctl" ./cmd/sptctl
S=$W/sptctl

peak() { # NAME CMD... -> prints the peak RSS in MB; the output stays in $W/NAME.out
	local name=$1; shift
	echo "== $name: $*" >&2
	if ! $TIME -v -o "$W/$name.time" "$@" >"$W/$name.out" 2>"$W/$name.err"; then
		echo "$name failed:" >&2; tail -20 "$W/$name.err" >&2; exit 1
	fi
	awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$W/$name.time"
}

$S data fewshot --classes 0-4 --train 16 --val 8 --test 8 --seed 0 --out "$W/fm16" >/dev/null 2>&1
$S data fewshot --classes 0-4 --train 8 --val 8 --test 8 --seed 0 --out "$W/fm8" >/dev/null 2>&1
sens() { peak "sens_$1" $S sensitivity --model "$MODEL" --data "$W/fm16" --batches 2 --batch-size 8 \
	--precision "$1" --threads "$THREADS" --out "$W/scores-$1.safetensors"; }
torch() { peak "torch_$1" $PY bench/engine/torch_fb.py --model vit_b_16 --batch 8 --steps 1 --warmup 0 \
	--classes 5 --threads "$THREADS" $2; }
s32=() t32=() s16=() t16=()
for ((r = 1; r <= ROUNDS; r++)); do
	s32+=("$(sens fp32)") t32+=("$(torch fp32 "")")
	s16+=("$(sens bf16)") t16+=("$(torch bf16 --bf16)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
range() { printf '%s\n' "$@" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END{if (lo==hi) print lo; else print lo "–" hi}'; }
row() { echo "$(median "$@") ($(range "$@"))"; }
ms32=$(median "${s32[@]}") mt32=$(median "${t32[@]}") ms16=$(median "${s16[@]}") mt16=$(median "${t16[@]}")

$S allocate --model "$MODEL" --scores "$W/scores-fp32.safetensors" --budget 0.4M --type lora --out "$W/plan.json" >/dev/null 2>&1
$S inject --model "$MODEL" --plan "$W/plan.json" --out "$W/tunable.onnx" >/dev/null 2>&1
$S train --model "$W/tunable.onnx" --data "$W/fm8" --epochs 1 --batch-size 8 --warmup 0 --threads "$THREADS" \
	--out "$W/trained.onnx" >/dev/null 2>&1
merge=$(peak merge $S export --model "$W/trained.onnx" --base "$MODEL" --merge --out "$W/merged.onnx" --samples 2)
size=$(stat -L -c %s "$MODEL")
size_mb=$(awk -v s="$size" 'BEGIN{printf "%.0f", s/1048576}')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
{
	echo "# Peak memory: sensitivity and export --merge on vit_b_16 (issue 11, item 3)"
	echo
	echo "Command: \`bench/memory/run.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, THREADS=$THREADS, ROUNDS=$ROUNDS, $REV)."
	echo "Model: \`$MODEL\` ($size bytes = $size_mb MiB), torchvision vit_b_16 with random weights, 224x224."
	echo "Each number is one process under \`/usr/bin/time -v\` (Maximum resident set size, MiB); the sensitivity and PyTorch rows ran $ROUNDS times, interleaved: median (range). export --merge ran once."
	echo
	echo "| what | command | peak RSS (MiB) |"
	echo "|---|---|---:|"
	echo "| sptctl sensitivity fp32 | \`sensitivity --batches 2 --batch-size 8 --precision fp32\` | $(row "${s32[@]}") |"
	echo "| sptctl sensitivity bf16 | \`sensitivity --batches 2 --batch-size 8 --precision bf16\` | $(row "${s16[@]}") |"
	echo "| PyTorch fwd+bwd fp32 | \`torch_fb.py --model vit_b_16 --batch 8 --steps 1 --warmup 0 --classes 5\` | $(row "${t32[@]}") |"
	echo "| PyTorch fwd+bwd bf16 autocast | same, \`--bf16\` | $(row "${t16[@]}") |"
	echo "| sptctl export --merge | \`export --merge --samples 2\` (0.4M SPT-LoRA, trained 1 step) | $merge |"
	echo
	echo "- medians: sensitivity fp32 / PyTorch fp32 fwd+bwd: $(ratio "$ms32" "$mt32")x; sensitivity bf16 / PyTorch fp32: $(ratio "$ms16" "$mt32")x, / PyTorch bf16: $(ratio "$ms16" "$mt16")x (target: at most 1x)."
	echo "- export --merge / model file: $(ratio "$merge" "$size_mb")x (target: at most 3x)."
	# what earlier runs measured, and why the numbers moved: kept by hand beside the script
	[[ -f bench/memory/history.md ]] && { echo; cat bench/memory/history.md; }
} | tee "$OUTMD"
