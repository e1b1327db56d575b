#!/usr/bin/env bash
# One-command, idempotent set-up for sptctl (docs/ARCHITECTURE.md, "Dependencies"):
#   a. Debian packages (libtorch, OpenBLAS, the Python oracle, data, protoc)
#   b. gotch v0.8.0 copied to third_party/gotch and patched (scripts/patch-gotch.py),
#      go.mod pointed at it, and its cgo packages compiled once into the build cache
#   c. ONNX Runtime's libonnxruntime.so.1 from the npm package onnxruntime-node
#   d. libblas.so.3 / liblapack.so.3 resolving to OpenBLAS
# Each step is skipped when its result is present and current; a second run takes
# a few seconds. Every failure is loud: "setup: STEP: why" on stderr, exit 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GOTCH_VERSION=v0.8.0
ORT_NPM_VERSION=1.30.0
DEB_PACKAGES=(libtorch-dev libopenblas0-openmp g++ dataset-fashion-mnist python3-torch
	python3-torchvision python3-onnx protobuf-compiler python3-sklearn)
ARCH_TRIPLET=x86_64-linux-gnu

say() { echo "setup: $*" >&2; }
die() {
	echo "setup: $*" >&2
	exit 1
}
as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
sha() { sha256sum "$@" | awk '{print $1}'; }
CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}"' EXIT

# ------------------------------------------------------------------ a. Debian packages
missing_packages() {
	# One dpkg-query for all; a package dpkg has never heard of is missing too.
	local installed
	installed=$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null |
		awk '$2 == "install" && $3 == "ok" && $4 == "installed" {print $1}' || true)
	local p
	for p in "$@"; do
		printf '%s\n' "$installed" | grep -qxF "$p" || echo "$p"
	done
}

step_debian() {
	local want=("${DEB_PACKAGES[@]}")
	command -v npm >/dev/null 2>&1 || want+=(npm)
	local missing
	missing=$(missing_packages "${want[@]}")
	if [ -n "$missing" ]; then
		say "installing Debian package(s): $(echo $missing)"
		# shellcheck disable=SC2086
		if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
			as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >&2; }; then
			die "cannot install Debian package(s): $(echo $missing)"
		fi
		missing=$(missing_packages "${want[@]}")
		[ -z "$missing" ] || die "cannot install Debian package(s): $(echo $missing)"
	fi
	command -v go >/dev/null 2>&1 || die "go is not on PATH"
	say "debian packages ok"
}

# ------------------------------------------------------------------ b. gotch
step_gotch() {
	local dst=third_party/gotch stamp=third_party/gotch/.sptctl-stamp
	local torchver gxxver key dir
	torchver=$(dpkg-query -W -f='${Version}' libtorch-dev)
	gxxver=$(g++ -dumpfullversion 2>/dev/null || g++ -dumpversion)
	key="gotch $GOTCH_VERSION; patch $(sha scripts/patch-gotch.py); libtorch-dev $torchver; g++ $gxxver"

	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -f "$dst/go.mod" ]; then
		:
	else
		[ -d "$dst" ] && say "gotch: patch script, libtorch or g++ changed; re-patching"
		local json
		json=$(go mod download -json "github.com/sugarme/gotch@$GOTCH_VERSION") ||
			die "gotch: go mod download github.com/sugarme/gotch@$GOTCH_VERSION failed"
		dir=$(printf '%s' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		[ -n "$dir" ] && [ -d "$dir" ] || die "gotch: no module directory in: $json"
		python3 scripts/patch-gotch.py "$dir" "$dst" || die "gotch: patching failed"
		printf '%s\n' "$key" >"$stamp"
	fi

	# go.mod: add the two lines only when missing (others edit go.mod too; never
	# rewrite it). $have lists "require" and/or "replace" for what is there.
	local have
	have=$(go mod edit -json | python3 -c '
import json, sys
m = json.load(sys.stdin)
if any(r["Path"] == "github.com/sugarme/gotch" for r in m.get("Require") or []):
    print("require")
if any(r["Old"]["Path"] == "github.com/sugarme/gotch" and r["New"]["Path"] == "./third_party/gotch"
       for r in m.get("Replace") or []):
    print("replace")') || die "gotch: cannot read go.mod"
	case "$have" in *require*) ;; *)
		go mod edit -require="github.com/sugarme/gotch@$GOTCH_VERSION" || die "gotch: go mod edit -require failed" ;;
	esac
	case "$have" in *replace*) ;; *)
		go mod edit -replace=github.com/sugarme/gotch=./third_party/gotch || die "gotch: go mod edit -replace failed" ;;
	esac

	# Compile the cgo packages once (about 90 s cold, cached afterwards), so that a
	# broken toolchain shows up here and not in the middle of a test run.
	local out
	if ! out=$(CGO_ENABLED=1 go build github.com/sugarme/gotch/ts github.com/sugarme/gotch/nn 2>&1); then
		printf '%s\n' "$out" | tail -40 >&2
		die "gotch: the patched gotch does not compile (output above)"
	fi
	say "gotch ok ($(grep -c '^atg_' "$dst/SPTCTL_PATCHES.txt") wrappers stubbed; see $dst/SPTCTL_PATCHES.txt)"
}

# ------------------------------------------------------------------ c. ONNX Runtime
is_elf_shared_object() {
	# ELF magic, 64-bit, little-endian, e_type ET_DYN (3).
	local h
	h=$(od -An -tx1 -N18 "$1" 2>/dev/null | tr -d ' \n')
	[ "${h:0:8}" = 7f454c46 ] && [ "${h:8:4}" = 0201 ] && [ "${h:32:4}" = 0300 ]
}

step_onnxruntime() {
	local dst=third_party/onnxruntime lib=third_party/onnxruntime/libonnxruntime.so.1
	local stamp=third_party/onnxruntime/.sptctl-stamp key="onnxruntime-node@$ORT_NPM_VERSION"
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key $(sha "$lib" 2>/dev/null)" ] &&
		is_elf_shared_object "$lib"; then
		say "onnxruntime ok ($lib)"
		return
	fi
	command -v npm >/dev/null 2>&1 || die "onnxruntime: npm is not installed"
	local tmp
	tmp=$(mktemp -d)
	CLEANUP+=("$tmp")
	local tgz
	if ! tgz=$(cd "$tmp" && npm pack --silent --ignore-scripts "onnxruntime-node@$ORT_NPM_VERSION" 2>"$tmp/npm.log"); then
		cat "$tmp/npm.log" >&2
		die "onnxruntime: npm pack onnxruntime-node@$ORT_NPM_VERSION failed"
	fi
	tgz=$(printf '%s\n' "$tgz" | tail -1)
	[ -f "$tmp/$tgz" ] || die "onnxruntime: npm pack produced no tarball ($tgz)"
	tar -xzf "$tmp/$tgz" -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1 ||
		die "onnxruntime: package/bin/napi-v6/linux/x64/libonnxruntime.so.1 is not in $tgz"
	local got="$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1"
	is_elf_shared_object "$got" || die "onnxruntime: $tgz's libonnxruntime.so.1 is not an ELF shared object"
	mkdir -p "$dst"
	# Copy beside the target, then rename: a running test never sees half a file.
	cp "$got" "$lib.new.$$" && chmod 0644 "$lib.new.$$" && mv -f "$lib.new.$$" "$lib" ||
		die "onnxruntime: cannot write $lib"
	rm -rf "$tmp"
	printf '%s %s\n' "$key" "$(sha "$lib")" >"$stamp"
	say "onnxruntime ok ($lib from $key)"
}

# ------------------------------------------------------------------ d. BLAS
# libtorch links libblas.so.3, liblapack.so.3 and libopenblas.so.0 through Debian's
# alternatives. Debian prefers the pthread build of OpenBLAS when both are installed;
# sptctl wants the OpenMP one (libopenblas0-openmp): libtorch itself runs on OpenMP,
# so at::set_num_threads (torch.SetNumThreads) then governs BLAS as well, instead of
# OpenBLAS starting its own pool of threads beside libtorch's.
BLAS_FLAVOUR=openblas-openmp
blas_target() { readlink -f "/usr/lib/$ARCH_TRIPLET/$1" 2>/dev/null || true; }

step_blas() {
	local name alt want changed=0
	for name in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
		case "$(blas_target "$name")" in
		*/$BLAS_FLAVOUR/*) continue ;;
		esac
		alt="$name-$ARCH_TRIPLET"
		want=$(update-alternatives --list "$alt" 2>/dev/null | grep "/$BLAS_FLAVOUR/" | head -1 || true)
		[ -n "$want" ] || die "blas: no $BLAS_FLAVOUR alternative for $alt (is libopenblas0-openmp installed?)"
		as_root update-alternatives --set "$alt" "$want" >&2 || die "blas: update-alternatives --set $alt $want failed"
		changed=1
	done
	[ "$changed" = 0 ] || say "blas: pointed libblas.so.3, liblapack.so.3, libopenblas.so.0 at $BLAS_FLAVOUR"
	local lib path deps
	deps=$(ldd "/usr/lib/$ARCH_TRIPLET/libtorch_cpu.so") || die "blas: ldd libtorch_cpu.so failed"
	for lib in libblas.so.3 liblapack.so.3; do
		path=$(printf '%s\n' "$deps" | awk -v l="$lib" '$1 == l && !found {print $3; found = 1}')
		[ -n "$path" ] || die "blas: libtorch_cpu.so does not link $lib"
		case "$(readlink -f "$path")" in
		*/$BLAS_FLAVOUR/*) ;;
		*) die "blas: libtorch resolves $lib to $(readlink -f "$path"), not $BLAS_FLAVOUR" ;;
		esac
	done
	say "blas ok (libtorch -> $(readlink -f "$path" | xargs dirname))"
}

step_debian
step_gotch
step_onnxruntime
step_blas
say "done"
