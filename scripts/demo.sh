#!/usr/bin/env bash
# The built-in demo (`make demo`): tune the built-in backbone (models/vit-fmnist.onnx,
# pre-trained on Fashion-MNIST classes 0-4) on a new task, Fashion-MNIST classes 5-9
# with 800 training and 200 validation images, and evaluate the merged and sidecar
# exports with ONNX Runtime. CPU-sized settings; a few minutes on 2 cores.
# Environment: OUT (default demo-out), BUDGET (default 3%), EPOCHS (default 20).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SPTCTL=./bin/sptctl
OUT=${OUT:-demo-out}
BUDGET=${BUDGET:-3%}
EPOCHS=${EPOCHS:-20}
mkdir -p "$OUT"

echo "== the built-in backbone" >&2
"$SPTCTL" inspect models/vit-fmnist.onnx | sed -n 1,6p # sed reads it all: no SIGPIPE under pipefail

if [ ! -f "$OUT/task/fewshot.json" ]; then
	echo "== carving the task: Fashion-MNIST classes 5-9, 800 train / 200 val, all 5,000 test images" >&2
	"$SPTCTL" data fewshot --from /usr/share/datasets/fashion-mnist --classes 5-9 \
		--train 800 --val 200 --test 0 --seed 0 --out "$OUT/task"
fi

"$SPTCTL" tune --model models/vit-fmnist.onnx --data "$OUT/task" --task fmnist5-9 \
	--budget "$BUDGET" --sens-batches 8 --sens-batch-size 32 \
	--epochs "$EPOCHS" --warmup 2 --batch-size 64 --lr 5e-3 --weight-decay 1e-4 \
	--val-split val --out "$OUT/run" >"$OUT/summary.md"

echo
cat "$OUT/summary.md"
echo
echo "Serve either export with ONNX Runtime:"
echo "  merged:  $OUT/run/merged.onnx   (the base graph with the task's weights)"
echo "  sidecar: $OUT/run/sidecar/fmnist5-9.onnx (+ base.data shared by every task, fmnist5-9.data)"
echo "  e.g. ./bin/sptctl eval --model $OUT/run/merged.onnx --data $OUT/task --split test"
