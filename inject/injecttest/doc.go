// Package injecttest checks injected models numerically with ONNX Runtime (through
// export/ort, which uses cgo), apart from package inject, which stays pure Go.
package injecttest
