# sptctl: `make test` is what CI runs (.ci/run). Every target that compiles runs
# scripts/setup.sh first; it is idempotent and takes a few seconds once done.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

export CGO_ENABLED := 1
# libtorch's OpenMP threads wait passively instead of spinning (sptctl itself sets this
# too; see cmd/sptctl/main.go): tests then keep their speed on a busy machine.
export OMP_WAIT_POLICY ?= PASSIVE
# ONNX Runtime's shared library, fetched by scripts/setup.sh; tests and the CLI read it.
SPTCTL_ORT_LIB ?= $(CURDIR)/third_party/onnxruntime/libonnxruntime.so.1
export SPTCTL_ORT_LIB

GO ?= go

.PHONY: setup build test demo fuzz clean distclean

setup:
	./scripts/setup.sh

build: setup
	$(GO) build -o bin/sptctl ./cmd/sptctl

test: setup
	$(GO) vet ./...
	$(GO) test ./...

demo: build
	./scripts/demo.sh

# fuzz runs every fuzz target (found with go test -list '^Fuzz') for FUZZTIME each.
FUZZTIME ?= 30s
fuzz: setup
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

# clean removes build outputs; distclean also what setup fetched and patched.
clean:
	rm -rf bin

distclean: clean
	rm -rf third_party
