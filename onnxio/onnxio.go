// Package onnxio reads and writes ONNX models losslessly.
//
// Load decodes a model file and brings any external tensor data into memory, checking
// that every initializer holds exactly as many bytes as its shape needs. Save writes a
// model back with a deterministic protobuf encoding, so a model loaded and saved
// unchanged is byte-identical to its file; it moves large tensors to one side file when
// asked to, or on its own when the protobuf would pass the 2 GiB limit. Every write goes
// to a temporary file that is renamed into place, so no half-written model is ever seen.
//
// Neither direction copies the weights more than it must. Load reads the file once and
// does not copy the initializers' raw_data out of that buffer: the RawData of every
// initializer of the main graph is a sub-slice of the one buffer the file was read into
// (tensors in node attributes and subgraphs, and external data, are copied; they are
// small or read separately). So the buffer stays in memory while any initializer of the
// model does, and Go's garbage collector frees it with the last of them. Each such
// RawData has its capacity limited to its own bytes, so writing into it in place changes
// that tensor only and append copies it; the slices are not aligned to the element size.
// The setters (SetFloats, ...) replace RawData rather than writing into it, so setting a
// tensor never changes another one or the file's buffer. Save and EncodeTo stream the
// encoding to the file, writing each large raw_data straight from the model, so saving
// needs little memory beyond the model itself.
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
// afterwards, so the returned model no longer depends on any side file. The file is
// read into memory once and its initializers' raw_data is not copied again: they share
// that buffer (see the package documentation).
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
	if err := checkNodeTensors(m.GetGraph()); err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return m, nil
}

// Decode parses a serialized ModelProto and checks that it looks like an ONNX model
// (an IR version and a graph). External data is not resolved. The model is the one
// proto.Unmarshal gives, except that the raw_data of its graph's initializers is not
// copied: it shares b's memory (see the package documentation), so b must not be
// changed while the model is in use.
func Decode(b []byte) (*onnxpb.ModelProto, error) {
	if len(b) == 0 {
		return nil, errors.New("empty file, not an ONNX model")
	}
	m, err := unmarshalShared(b)
	if err != nil {
		return nil, fmt.Errorf("not an ONNX model (protobuf decode failed, truncated or another format): %w", err)
	}
	if m.GetIrVersion() <= 0 || m.Graph == nil {
		return nil, errors.New("not an ONNX model (no IR version or no graph)")
	}
	return m, nil
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
