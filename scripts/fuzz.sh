#!/usr/bin/env bash
# fuzz.sh runs every Go fuzz target of the module for FUZZTIME each (default 30s):
#   make fuzz                 # or: FUZZTIME=5m scripts/fuzz.sh
#   scripts/fuzz.sh ./onnxio  # only the targets of these packages
# Targets are found with `go test -list '^Fuzz'` in every package whose tests define
# one, so new targets are picked up. A failure leaves its input under the package's
# testdata/fuzz/ (Go's own corpus), prints it and makes the script exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}
if [ $# -gt 0 ]; then
	pkgs=("$@")
else
	# Packages with a `func Fuzz...` in a test file (grep first: listing every
	# package's tests would compile them all).
	mapfile -t dirs < <(grep -rlE '^func Fuzz[A-Z0-9_]' --include='*_test.go' . | grep -v '^./third_party/' | xargs -r -n1 dirname | sort -u)
	pkgs=("${dirs[@]}")
fi
failed=0
ran=0
for pkg in "${pkgs[@]}"; do
	mapfile -t targets < <(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
	for t in "${targets[@]}"; do
		echo "== $pkg $t ($FUZZTIME)"
		ran=$((ran + 1))
		if ! go test -run '^$' -fuzz "^${t}\$" -fuzztime "$FUZZTIME" "$pkg"; then
			echo "FAIL: $pkg $t"
			failed=$((failed + 1))
		fi
	done
done
echo "fuzz: $ran targets, $failed failed"
[ "$ran" -gt 0 ] && [ "$failed" -eq 0 ]
