package adapter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/sptctl/sptctl/export/adapter/internal/fb"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Facts of ONNX Runtime's adapter format (onnxruntime/lora/adapter_format/
// adapter_schema.fbs, adapter_format_version.h and adapter_format_utils.cc in the
// ONNX Runtime repository; ONNX Runtime 1.20 to 1.30 read it the same way).
const (
	// FileIdentifier is the FlatBuffers file identifier, bytes 4 to 8 of the file.
	FileIdentifier = "TORT"
	// FormatVersion is the only format version ONNX Runtime accepts.
	FormatVersion = 1
	// Ext is the file extension ONNX Runtime's tools use.
	Ext = ".onnx_adapter"
)

// Tensor is one adapter parameter: a dense tensor in C order whose bytes are stored
// little-endian, as ONNX's raw_data.
type Tensor struct {
	Dims     []int64
	DataType int32 // ONNX TensorProto.DataType: onnxio.Float, onnxio.Int64, ...
	Raw      []byte
}

// FloatTensor makes a float32 tensor; len(v) must match dims.
func FloatTensor(dims []int64, v []float32) Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return Tensor{Dims: slices.Clone(dims), DataType: onnxio.Float, Raw: b}
}

// Int64Tensor makes an int64 tensor; len(v) must match dims.
func Int64Tensor(dims []int64, v []int64) Tensor {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return Tensor{Dims: slices.Clone(dims), DataType: onnxio.Int64, Raw: b}
}

// Floats returns a copy of a float32 tensor's values.
func (t Tensor) Floats() ([]float32, error) {
	if t.DataType != onnxio.Float {
		return nil, fmt.Errorf("tensor is %s, not FLOAT", typeName(t.DataType))
	}
	if err := t.checkSize(); err != nil {
		return nil, err
	}
	out := make([]float32, len(t.Raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Raw[4*i:]))
	}
	return out, nil
}

// Int64s returns a copy of an int64 tensor's values.
func (t Tensor) Int64s() ([]int64, error) {
	if t.DataType != onnxio.Int64 {
		return nil, fmt.Errorf("tensor is %s, not INT64", typeName(t.DataType))
	}
	if err := t.checkSize(); err != nil {
		return nil, err
	}
	out := make([]int64, len(t.Raw)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(t.Raw[8*i:]))
	}
	return out, nil
}

// checkSize reports whether the data holds exactly what the dims and type need.
func (t Tensor) checkSize() error {
	es := onnxio.ElemSize(t.DataType)
	if es == 0 || t.DataType == int32(onnxpb.TensorProto_STRING) {
		return fmt.Errorf("data type %s is not supported in adapters", typeName(t.DataType))
	}
	n := onnxio.NumElements(t.Dims)
	if n < 0 {
		return fmt.Errorf("negative dimension in shape %v", t.Dims)
	}
	if int64(len(t.Raw)) != n*int64(es) {
		return fmt.Errorf("%d bytes of data, but shape %v of %s needs %d", len(t.Raw), t.Dims, typeName(t.DataType), n*int64(es))
	}
	return nil
}

func typeName(dt int32) string {
	if s, ok := onnxpb.TensorProto_DataType_name[dt]; ok {
		return s
	}
	return fmt.Sprintf("type %d", dt)
}

// File is a decoded .onnx_adapter file.
type File struct {
	FormatVersion  int32
	AdapterVersion int32
	ModelVersion   int32
	Tensors        map[string]Tensor
	Names          []string // the parameters in file order
}

// WriteOptions are the two free version numbers of the format. ONNX Runtime stores
// them but does not interpret them.
type WriteOptions struct {
	AdapterVersion int32
	ModelVersion   int32
}

// Write writes tensors to path as an .onnx_adapter file (atomically), parameters in
// name order, adapter and model version 1.
func Write(path string, tensors map[string]Tensor) error {
	return WriteWith(path, tensors, WriteOptions{AdapterVersion: 1, ModelVersion: 1})
}

// WriteWith is Write with chosen version numbers.
func WriteWith(path string, tensors map[string]Tensor, opt WriteOptions) error {
	b, err := Encode(tensors, opt)
	if err != nil {
		return fmt.Errorf("write adapter %s: %w", path, err)
	}
	if err := onnxio.WriteFileAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err }); err != nil {
		return fmt.Errorf("write adapter %s: %w", path, err)
	}
	return nil
}

// Encode serializes tensors in ONNX Runtime's adapter format. Each tensor's bytes
// start on an 8-byte boundary of the buffer (the schema's force_align: ONNX Runtime
// makes its tensors point into the buffer).
func Encode(tensors map[string]Tensor, opt WriteOptions) ([]byte, error) {
	names := make([]string, 0, len(tensors))
	size := 1024
	for name, t := range tensors {
		if name == "" {
			return nil, errors.New("a tensor has an empty name")
		}
		if err := t.checkSize(); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		names = append(names, name)
		size += len(t.Raw) + len(name) + 8*len(t.Dims) + 64
	}
	sort.Strings(names)
	b := flatbuffers.NewBuilder(size)
	params := make([]flatbuffers.UOffsetT, len(names))
	for i, name := range names {
		t := tensors[name]
		nameOff := b.CreateString(name)
		fb.ParameterStartDimsVector(b, len(t.Dims))
		for j := len(t.Dims) - 1; j >= 0; j-- {
			b.PrependInt64(t.Dims[j])
		}
		dimsOff := b.EndVector(len(t.Dims))
		// force_align: 8 (the generated Go code ignores it): align the data's end so
		// that its start is 8-aligned once the buffer is finished (Finish aligns the
		// whole buffer to the largest alignment used, here 8).
		b.Prep(8, len(t.Raw))
		dataOff := b.CreateByteVector(t.Raw)
		fb.ParameterStart(b)
		fb.ParameterAddName(b, nameOff)
		fb.ParameterAddDims(b, dimsOff)
		fb.ParameterAddDataType(b, fb.TensorDataType(t.DataType))
		fb.ParameterAddRawData(b, dataOff)
		params[i] = fb.ParameterEnd(b)
	}
	fb.AdapterStartParametersVector(b, len(params))
	for i := len(params) - 1; i >= 0; i-- {
		b.PrependUOffsetT(params[i])
	}
	paramsOff := b.EndVector(len(params))
	fb.AdapterStart(b)
	fb.AdapterAddFormatVersion(b, FormatVersion)
	fb.AdapterAddAdapterVersion(b, opt.AdapterVersion)
	fb.AdapterAddModelVersion(b, opt.ModelVersion)
	fb.AdapterAddParameters(b, paramsOff)
	root := fb.AdapterEnd(b)
	b.FinishWithFileIdentifier(root, []byte(FileIdentifier))
	return b.FinishedBytes(), nil
}

// Read reads the tensors of an .onnx_adapter file, checking the whole file first
// (see Decode).
func Read(path string) (map[string]Tensor, error) {
	f, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return f.Tensors, nil
}

// ReadFile reads and checks an .onnx_adapter file.
func ReadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read adapter: %w", err)
	}
	f, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", path, err)
	}
	return f, nil
}

// Decode parses an .onnx_adapter buffer. It checks what ONNX Runtime's loader checks
// (identifier, FlatBuffers structure, format version) and more: every offset and
// vector stays inside the buffer, every parameter has a unique non-empty name,
// non-negative dims, a fixed-size data type and exactly the bytes its shape needs.
// The tensors' Raw slices are copies.
func Decode(b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("not an ONNX Runtime adapter: %d bytes, too short for a header", len(b))
	}
	if id := string(b[4:8]); id != FileIdentifier {
		return nil, fmt.Errorf("not an ONNX Runtime adapter: file identifier %q, want %q", printable(b[4:8]), FileIdentifier)
	}
	v := verifier{b: b}
	root := v.uoffset(0)
	adapter := v.table(root)
	for slot := 0; slot < 3; slot++ {
		v.scalarField(adapter, slot, 4)
	}
	paramsVec := v.vectorField(adapter, 3, 4, 4)
	if v.err != nil {
		return nil, fmt.Errorf("malformed adapter (truncated or corrupt): %w", v.err)
	}
	a := fb.GetRootAsAdapter(b, 0)
	f := &File{FormatVersion: a.FormatVersion(), AdapterVersion: a.AdapterVersion(), ModelVersion: a.ModelVersion(), Tensors: map[string]Tensor{}}
	if f.FormatVersion != FormatVersion {
		return nil, fmt.Errorf("adapter format version %d is not supported (ONNX Runtime reads version %d)", f.FormatVersion, FormatVersion)
	}
	n := 0
	if paramsVec >= 0 {
		n = int(binary.LittleEndian.Uint32(b[paramsVec:]))
	}
	if n != a.ParametersLength() {
		return nil, errors.New("malformed adapter: parameter count disagrees")
	}
	var p fb.Parameter
	for i := 0; i < n; i++ {
		pt := v.table(v.uoffset(paramsVec + 4 + 4*i))
		nameVec := v.stringField(pt, 0)
		dimsVec := v.vectorField(pt, 1, 8, 8)
		v.scalarField(pt, 2, 4)
		dataVec := v.vectorField(pt, 3, 1, 1)
		if v.err != nil {
			return nil, fmt.Errorf("malformed adapter: parameter %d: %w", i, v.err)
		}
		if !a.Parameters(&p, i) {
			return nil, fmt.Errorf("malformed adapter: parameter %d missing", i)
		}
		name := string(p.Name())
		if nameVec < 0 || name == "" {
			return nil, fmt.Errorf("malformed adapter: parameter %d has no name", i)
		}
		if _, dup := f.Tensors[name]; dup {
			return nil, fmt.Errorf("malformed adapter: parameter %q appears twice", name)
		}
		if dimsVec < 0 {
			return nil, fmt.Errorf("parameter %q has no dims", name)
		}
		dims := make([]int64, p.DimsLength())
		for j := range dims {
			dims[j] = p.Dims(j)
		}
		var raw []byte
		if dataVec >= 0 {
			raw = slices.Clone(p.RawDataBytes())
			if (dataVec+4)%8 != 0 {
				return nil, fmt.Errorf("parameter %q: data not 8-byte aligned (ONNX Runtime would read it unaligned)", name)
			}
		}
		t := Tensor{Dims: dims, DataType: int32(p.DataType()), Raw: raw}
		if err := t.checkSize(); err != nil {
			return nil, fmt.Errorf("parameter %q: %w", name, err)
		}
		f.Tensors[name] = t
		f.Names = append(f.Names, name)
	}
	return f, nil
}

func printable(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 32 || c > 126 {
			c = '?'
		}
		out[i] = c
	}
	return string(out)
}

// verifier checks FlatBuffers structure before the generated accessors (which do not
// check bounds) read it. Positions are byte offsets into b; the first error sticks.
type verifier struct {
	b   []byte
	err error
}

func (v *verifier) fail(format string, a ...any) int {
	if v.err == nil {
		v.err = fmt.Errorf(format, a...)
	}
	return -1
}

func (v *verifier) in(pos, n int) bool {
	return pos >= 0 && n >= 0 && pos <= len(v.b) && n <= len(v.b)-pos
}

// uoffset follows the unsigned offset stored at pos.
func (v *verifier) uoffset(pos int) int {
	if v.err != nil || pos < 0 {
		return -1
	}
	if pos%4 != 0 || !v.in(pos, 4) {
		return v.fail("offset at %d out of bounds or unaligned", pos)
	}
	off := int(binary.LittleEndian.Uint32(v.b[pos:]))
	if off == 0 || !v.in(pos+off, 4) {
		return v.fail("offset at %d points outside the buffer", pos)
	}
	return pos + off
}

// table checks the table at pos and its vtable; it returns pos.
func (v *verifier) table(pos int) int {
	if v.err != nil || pos < 0 {
		return -1
	}
	if pos%4 != 0 || !v.in(pos, 4) {
		return v.fail("table at %d out of bounds or unaligned", pos)
	}
	vt := pos - int(int32(binary.LittleEndian.Uint32(v.b[pos:])))
	if vt%2 != 0 || !v.in(vt, 4) {
		return v.fail("vtable of table at %d out of bounds", pos)
	}
	vtLen := int(binary.LittleEndian.Uint16(v.b[vt:]))
	tLen := int(binary.LittleEndian.Uint16(v.b[vt+2:]))
	if vtLen < 4 || vtLen%2 != 0 || !v.in(vt, vtLen) || !v.in(pos, tLen) {
		return v.fail("vtable of table at %d malformed", pos)
	}
	return pos
}

// field is the position of field slot in the table at pos, or -1 if absent.
func (v *verifier) field(pos, slot, size int) int {
	if v.err != nil || pos < 0 {
		return -1
	}
	vt := pos - int(int32(binary.LittleEndian.Uint32(v.b[pos:])))
	vtLen := int(binary.LittleEndian.Uint16(v.b[vt:]))
	tLen := int(binary.LittleEndian.Uint16(v.b[vt+2:]))
	at := 4 + 2*slot
	if at+2 > vtLen {
		return -1
	}
	off := int(binary.LittleEndian.Uint16(v.b[vt+at:]))
	if off == 0 {
		return -1
	}
	if off+size > tLen || !v.in(pos+off, size) {
		return v.fail("field %d of table at %d outside the table", slot, pos)
	}
	return pos + off
}

// stringField is vectorField for a string: its bytes and the NUL after them.
func (v *verifier) stringField(pos, slot int) int {
	vec := v.vectorField(pos, slot, 1, 1)
	if vec < 0 {
		return -1
	}
	n := int(binary.LittleEndian.Uint32(v.b[vec:]))
	if !v.in(vec+4, n+1) || v.b[vec+4+n] != 0 {
		return v.fail("string in field %d of table at %d is not NUL-terminated inside the buffer", slot, pos)
	}
	return vec
}

func (v *verifier) scalarField(pos, slot, size int) int { return v.field(pos, slot, size) }

// vectorField checks the vector in field slot (elements of elemSize bytes, aligned
// to align) and returns the position of its length word, or -1 if absent.
func (v *verifier) vectorField(pos, slot, elemSize, align int) int {
	f := v.field(pos, slot, 4)
	if f < 0 {
		return -1
	}
	vec := v.uoffset(f)
	if vec < 0 {
		return -1
	}
	n := int(binary.LittleEndian.Uint32(v.b[vec:]))
	if n < 0 || n > len(v.b) || !v.in(vec+4, n*elemSize) {
		return v.fail("vector in field %d of table at %d runs past the end of the buffer", slot, pos)
	}
	if (vec+4)%align != 0 {
		return v.fail("vector in field %d of table at %d is not %d-byte aligned", slot, pos, align)
	}
	return vec
}
