package onnxio

// EncodeToMin is EncodeTo for any message, streaming every message and bytes field
// larger than min bytes (EncodeTo streams above 64 KiB), so that small inputs reach every path.
var EncodeToMin = encodeTo
