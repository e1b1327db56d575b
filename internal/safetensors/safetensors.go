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

// MaxHeader is the largest JSON header Decode accepts (100 MB, the limit the format's
// reference implementation sets), so a corrupt length cannot make it parse without end.
const MaxHeader = 100 << 20

// Read loads a safetensors file of F32 tensors.
func Read(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return f, nil
}

// Decode parses a safetensors file's bytes. Every size is checked before it is used:
// the header length against the file and MaxHeader, each shape's byte count for
// overflow and against its byte range, each range against the data that follows the
// header; no two tensors' ranges may overlap.
func Decode(b []byte) (*File, error) {
	fail := func(format string, a ...any) (*File, error) {
		return nil, fmt.Errorf(format, a...)
	}
	if len(b) < 8 {
		return fail("too short for a safetensors file")
	}
	hl := binary.LittleEndian.Uint64(b)
	if hl > uint64(len(b)-8) {
		return fail("header length %d past the end of the file (%d bytes)", hl, len(b))
	}
	if hl > MaxHeader {
		return fail("header length %d is over the %d-byte limit", hl, MaxHeader)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+hl], &raw); err != nil {
		return fail("header is not JSON: %v", err)
	}
	data := b[8+hl:]
	f := &File{Tensors: map[string]Tensor{}, Metadata: map[string]string{}}
	type span struct {
		name       string
		begin, end int64
	}
	var spans []span
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
		size, err := onnxio.ByteSize(e.Shape, onnxio.Float)
		if err != nil {
			return fail("tensor %q: %v", name, err)
		}
		lo, hi := e.Offsets[0], e.Offsets[1]
		if lo < 0 || hi < lo || hi > int64(len(data)) {
			return fail("tensor %q: byte range %v is not within the %d data bytes", name, e.Offsets, len(data))
		}
		if hi-lo != size {
			return fail("tensor %q: byte range %v holds %d bytes, shape %v of F32 needs %d", name, e.Offsets, hi-lo, e.Shape, size)
		}
		spans = append(spans, span{name, lo, hi})
		v := make([]float32, size/4)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[lo+4*int64(i):]))
		}
		shape := e.Shape
		if shape == nil {
			shape = []int64{}
		}
		f.Tensors[name] = Tensor{Shape: shape, Data: v}
	}
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].name < spans[j].name
	})
	for i := 1; i < len(spans); i++ {
		a, b := spans[i-1], spans[i]
		if b.begin < a.end {
			x, y := a.name, b.name
			if x > y {
				x, y = y, x
			}
			return fail("tensors %q and %q overlap (byte ranges [%d %d] and [%d %d])", x, y, a.begin, a.end, b.begin, b.end)
		}
	}
	return f, nil
}
