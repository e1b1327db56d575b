#!/usr/bin/env bash
# Robustness: sptctl on ~150 bad inputs of every kind (corrupt and truncated models,
# external data through symlinks or out of the model's folder, overflowing dims, huge
# declared inputs, outputs that are inputs, bad flags, bad labels and images, bad plans
# and score files, sidecars and checkpoints of another base, bad .npy files).
#
#   bench/robustness.sh          # writes bench/RESULTS-robustness.md
#
# Every case must exit 1 or 2 with one line of sptctl's on stderr, no stack trace, and
# leave every input file as it was (sha256 before and after); the script exits 1 if
# any case does not (the table marks it). Needs Fashion-MNIST in
# /usr/share/datasets/fashion-mnist (IDX=DIR to change).
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export SPTCTL_ORT_LIB=${SPTCTL_ORT_LIB:-$PWD/third_party/onnxruntime/libonnxruntime.so.1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/sptctl" ./cmd/sptctl
go build -o "$tmp/robustness" ./bench/robustness
"$tmp/robustness" -sptctl "$tmp/sptctl" -repo . -out bench/RESULTS-robustness.md \
	-idx "${IDX:-/usr/share/datasets/fashion-mnist}" "$@"
