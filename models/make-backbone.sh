#!/usr/bin/env bash
# Makes the built-in backbone models/vit-fmnist.onnx the way a user's model is made:
# PyTorch's exporter writes a randomly initialised torchvision ViT for 28x28 grayscale
# images (models/make_init.py), then sptctl itself pre-trains it in full on the
# "upstream" Fashion-MNIST classes 0-4 and exports it merged. The downstream tasks
# (the demo, the benchmark) use the other classes, or other data.
# Usage: models/make-backbone.sh   (after `make build`; takes a few minutes on 2 cores)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SPTCTL=${SPTCTL:-./bin/sptctl}
EPOCHS=${EPOCHS:-8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

/usr/bin/python3 models/make_init.py "$work/init.onnx"
"$SPTCTL" data fewshot --from /usr/share/datasets/fashion-mnist --classes 0-4 \
	--train 4000 --val 500 --test 0 --seed 0 --out "$work/upstream"
"$SPTCTL" allocate --model "$work/init.onnx" --strategy full --classes 5 --out "$work/plan.json" >/dev/null
"$SPTCTL" inject --model "$work/init.onnx" --plan "$work/plan.json" --keep-head --dropout 0 --out "$work/tunable.onnx"
"$SPTCTL" train --model "$work/tunable.onnx" --data "$work/upstream" --epochs "$EPOCHS" --warmup 1 \
	--batch-size 64 --lr 1e-3 --weight-decay 0.05 --val-every 2 --seed 0 --out "$work/trained.onnx"
"$SPTCTL" export --model "$work/trained.onnx" --base "$work/init.onnx" --merge --out models/vit-fmnist.onnx
"$SPTCTL" eval --model models/vit-fmnist.onnx --data "$work/upstream" --split test --json > models/vit-fmnist.upstream.json
cat models/vit-fmnist.upstream.json
