package adapter

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// The adapter format has no place for metadata, and ONNX Runtime feeds every parameter
// of an adapter to the model as an input, so an extra parameter cannot carry the base
// model. Its model_version field is free (ONNX Runtime stores it without reading it):
// WriteFor records 31 bits of a hash of the base model's fingerprint there, with the
// low bit set so that it is never 0 or 1, the values older files and other writers
// use. CheckBase compares it with the adapter-ready model's base.

// BaseTag is the model_version value that identifies the base model with the given
// fingerprint (onnxio.Fingerprint): always ≥ 3, never 0 or 1.
func BaseTag(fingerprint string) int32 {
	h := sha256.Sum256([]byte(fingerprint))
	v := int32(binary.BigEndian.Uint32(h[:4]) &^ (1 << 31))
	if v < 3 {
		v += 3
	}
	return v | 1
}

// WriteFor writes tensors as an adapter for the base model with the given fingerprint
// (adapter version 1, model version BaseTag(fingerprint)).
func WriteFor(path string, tensors map[string]Tensor, baseFingerprint string) error {
	return WriteWith(path, tensors, WriteOptions{AdapterVersion: 1, ModelVersion: BaseTag(baseFingerprint)})
}

// CheckBase refuses an adapter that records a base model (written by WriteFor) other
// than ready's (the adapter-ready model's base). Adapters that record none (model
// version 0 or 1: written by an older sptctl, or by another tool) are accepted; their
// tensors are still checked against the model by Check.
func CheckBase(f *File, ready *onnxpb.ModelProto) error {
	if f.ModelVersion == 0 || f.ModelVersion == 1 {
		return nil
	}
	info, err := Info(ready)
	if err != nil {
		return nil // not an adapter-ready model: Check says what does not fit
	}
	if want := BaseTag(info.BaseFingerprint); f.ModelVersion != want {
		return fmt.Errorf("adapter was trained on another base model (its base tag %d, the model's base %s has tag %d)", f.ModelVersion, onnxio.ShortFingerprint(info.BaseFingerprint), want)
	}
	return nil
}
