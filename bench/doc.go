// Package bench holds benchmarks and checks on full-size models that are too large for
// testdata/ and too slow for CI: make_vit_b16.py writes torchvision's vit_b_16 (random
// weights) to bench/cache/, io.sh compares onnxio's load and save with Python's onnx
// (results in RESULTS-io.md), and roundtrip_test.go runs only when SPTCTL_VIT_B16
// names that file.
package bench
