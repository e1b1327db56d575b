// Package onnxio reads and writes ONNX models losslessly.
//
// Load decodes a model file and brings any external tensor data into memory, checking
// that every initializer holds exactly as many bytes as its shape needs. Save writes a
// model back with a deterministic protobuf encoding, so a model loaded and saved
// unchanged is byte-identical to its file; it moves large tensors to one side file when
// asked to, or on its own when the protobuf would pass the 2 GiB limit. Every write goes
// to a temporary file that is renamed into place, so no half-written model is ever seen.
//
// The tensor helpers (Floats, SetFloats, Int64s, NewFloat, ...) read and write
// initializer values whether they are stored as raw_data or as typed fields.
package onnxio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// MaxProtoSize is the largest protobuf that protobuf implementations accept (2 GiB).
// Save moves tensor data to a side file when a model would be larger.
const MaxProtoSize = 1<<31 - 1

// Load reads the ONNX model at path. Tensors stored as external data are read from
// their files, resolved relative to the model's folder, and held inline (raw_data)
// afterwards, so the returned model no longer depends on any side file.
func Load(path string) (*onnxpb.ModelProto, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, errors.Unwrap(err))
	}
	m, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	if err := resolveExternal(m, filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	if err := CheckInitializers(m.GetGraph()); err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return m, nil
}

// Decode parses a serialized ModelProto and checks that it looks like an ONNX model
// (an IR version and a graph). External data is not resolved.
func Decode(b []byte) (*onnxpb.ModelProto, error) {
	if len(b) == 0 {
		return nil, errors.New("empty file, not an ONNX model")
	}
	m := &onnxpb.ModelProto{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("not an ONNX model (protobuf decode failed, truncated or another format): %w", err)
	}
	if m.GetIrVersion() <= 0 || m.Graph == nil {
		return nil, errors.New("not an ONNX model (no IR version or no graph)")
	}
	return m, nil
}

// Encode serializes a model deterministically (map fields sorted), so the same model
// always gives the same bytes.
func Encode(m *onnxpb.ModelProto) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// Opset returns the model's version of the default ("" or "ai.onnx") operator set,
// or 0 if it declares none.
func Opset(m *onnxpb.ModelProto) int64 {
	for _, o := range m.GetOpsetImport() {
		if o.GetDomain() == "" || o.GetDomain() == "ai.onnx" {
			return o.GetVersion()
		}
	}
	return 0
}

// Metadata returns the value of the model's metadata_props entry key.
func Metadata(m *onnxpb.ModelProto, key string) (string, bool) {
	for _, p := range m.GetMetadataProps() {
		if p.GetKey() == key {
			return p.GetValue(), true
		}
	}
	return "", false
}

// SetMetadata sets (or adds) the metadata_props entry key.
func SetMetadata(m *onnxpb.ModelProto, key, value string) {
	for _, p := range m.GetMetadataProps() {
		if p.GetKey() == key {
			p.Value = proto.String(value)
			return
		}
	}
	m.MetadataProps = append(m.MetadataProps, &onnxpb.StringStringEntryProto{Key: proto.String(key), Value: proto.String(value)})
}
