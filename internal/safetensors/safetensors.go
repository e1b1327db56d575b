// Package safetensors reads and writes float32 tensors in the safetensors format
// (an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
// shape and byte range, then the raw data), the format sptctl's score files use.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/sptctl/sptctl/onnxio"
)

// Tensor is a float32 tensor.
type Tensor struct {
	Shape []int64
	Data  []float32
}

// File is the content of a safetensors file.
type File struct {
	Tensors  map[string]Tensor
	Metadata map[string]string
}

type entry struct {
	Dtype   string   `json:"dtype"`
	Shape   []int64  `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// Write stores f at path atomically, tensors in name order.
func Write(path string, f *File) error {
	names := make([]string, 0, len(f.Tensors))
	for n, t := range f.Tensors {
		if onnxio.NumElements(t.Shape) != int64(len(t.Data)) {
			return fmt.Errorf("write %s: tensor %q has %d values for shape %v", path, n, len(t.Data), t.Shape)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	header := map[string]any{}
	if len(f.Metadata) > 0 {
		header["__metadata__"] = f.Metadata
	}
	var off int64
	for _, n := range names {
		t := f.Tensors[n]
		size := int64(4 * len(t.Data))
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		header[n] = entry{Dtype: "F32", Shape: shape, Offsets: [2]int64{off, off + size}}
		off += size
	}
	h, err := json.Marshal(header) // map keys are sorted: deterministic
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	for len(h)%8 != 0 { // the format pads the header with spaces to 8 bytes
		h = append(h, ' ')
	}
	err = onnxio.WriteFileAtomic(path, func(w io.Writer) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(h)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(h); err != nil {
			return err
		}
		buf := make([]byte, 0, 1<<16)
		for _, name := range names {
			for _, x := range f.Tensors[name].Data {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(x))
				if len(buf) == cap(buf) {
					if _, err := w.Write(buf); err != nil {
						return err
					}
					buf = buf[:0]
				}
			}
		}
		_, err := w.Write(buf)
		return err
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Read loads a safetensors file of F32 tensors.
func Read(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	fail := func(format string, a ...any) (*File, error) {
		return nil, fmt.Errorf("read %s: %s", path, fmt.Sprintf(format, a...))
	}
	if len(b) < 8 {
		return fail("too short for a safetensors file")
	}
	hl := binary.LittleEndian.Uint64(b)
	if hl > uint64(len(b)-8) {
		return fail("header length %d past the end of the file (%d bytes)", hl, len(b))
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+hl], &raw); err != nil {
		return fail("header is not JSON: %v", err)
	}
	data := b[8+hl:]
	f := &File{Tensors: map[string]Tensor{}, Metadata: map[string]string{}}
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return fail("metadata: %v", err)
			}
			continue
		}
		var e entry
		if err := json.Unmarshal(msg, &e); err != nil {
			return fail("tensor %q: %v", name, err)
		}
		if e.Dtype != "F32" {
			return fail("tensor %q has dtype %s; sptctl reads F32 only", name, e.Dtype)
		}
		n := onnxio.NumElements(e.Shape)
		if e.Offsets[0] < 0 || e.Offsets[1] > int64(len(data)) || e.Offsets[1]-e.Offsets[0] != 4*n {
			return fail("tensor %q: byte range %v does not fit shape %v in %d data bytes", name, e.Offsets, e.Shape, len(data))
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[e.Offsets[0]+4*int64(i):]))
		}
		f.Tensors[name] = Tensor{Shape: e.Shape, Data: v}
	}
	return f, nil
}
