package onnxio

import (
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/encoding/protowire"
)

// Reading a model file's signature and metadata without decoding it: the peekers walk
// the protobuf's fields by offset and read only the few small ones they need.

// ValueInfo is a graph input or output as the file declares it.
type ValueInfo struct {
	Name     string
	ElemType int32   // ONNX element type (onnxpb.TensorProto_DataType)
	Shape    []int64 // -1 for a dimension without a fixed size; nil: unknown rank
}

// ErrPeekUnsupported is PeekIO's error for an encoding it does not read; decode the
// model (or ask the runtime) instead.
var ErrPeekUnsupported = errors.New("unsupported model encoding")

// scanIO reads a model's graph inputs (less initializers) and outputs straight from
// its protobuf, as ONNX Runtime reports them, without decoding the rest: large
// fields (nodes, tensor data) are skipped by offset, so this costs a few hundred
// small reads even for a model of hundreds of megabytes. It fails with
// ErrPeekUnsupported for anything it does not understand (non-tensor inputs, several
// graph fields, groups); the caller then asks ONNX Runtime instead.
//
// It exists because the dynamic session API needs the input and output names before
// the session is made and cannot report them afterwards: asking ONNX Runtime means
// building a second session, which costs about 0.5 s for vit_b_16.
func PeekIO(r io.ReaderAt, size int64) (ins, outs []ValueInfo, err error) {
	p := pbReader{r: r}
	var graph [2]int64
	ngraph := 0
	err = p.each(0, size, func(f wireField) error {
		if f.num == 7 && f.typ == protowire.BytesType {
			graph = [2]int64{f.start, f.stop}
			ngraph++
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if ngraph != 1 {
		return nil, nil, fmt.Errorf("%w: %d graph fields", ErrPeekUnsupported, ngraph)
	}
	inits := map[string]bool{}
	var inputs, outputs []ValueInfo
	err = p.each(graph[0], graph[1], func(f wireField) error {
		if f.typ != protowire.BytesType {
			return nil
		}
		switch f.num {
		case 5: // initializer: TensorProto, name = 8
			name, err := p.stringField(f.start, f.stop, 8)
			if err != nil {
				return err
			}
			inits[name] = true
		case 15: // sparse_initializer: SparseTensorProto, values = 1 (TensorProto)
			return p.each(f.start, f.stop, func(g wireField) error {
				if g.num == 1 && g.typ == protowire.BytesType {
					name, err := p.stringField(g.start, g.stop, 8)
					if err != nil {
						return err
					}
					inits[name] = true
				}
				return nil
			})
		case 11, 12: // input, output: ValueInfoProto
			if f.stop-f.start > 1<<20 {
				return fmt.Errorf("%w: value info of %d bytes", ErrPeekUnsupported, f.stop-f.start)
			}
			b := make([]byte, f.stop-f.start)
			if _, err := r.ReadAt(b, f.start); err != nil {
				return err
			}
			info, err := parseValueInfo(b)
			if err != nil {
				return err
			}
			if f.num == 11 {
				inputs = append(inputs, info)
			} else {
				outputs = append(outputs, info)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for _, in := range inputs {
		if !inits[in.Name] {
			ins = append(ins, in)
		}
	}
	return ins, outputs, nil
}

// PeekMetadata reads a model file's metadata_props (ModelProto field 14) without
// decoding its graph or tensors.
func PeekMetadata(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	bad := func(err error) error { return fmt.Errorf("%s: not an ONNX model (%v)", path, err) }
	p := pbReader{r: f}
	out := map[string]string{}
	err = p.each(0, st.Size(), func(fl wireField) error {
		if fl.num != 14 || fl.typ != protowire.BytesType {
			return nil
		}
		key, val, err := readEntry(f, fl, 1<<26, "metadata entry")
		out[key] = val
		return err
	})
	if err != nil {
		return nil, bad(err)
	}
	return out, nil
}

type wireField struct {
	num         protowire.Number
	typ         protowire.Type
	start, stop int64 // the value's bytes, for BytesType
}

// pbReader walks protobuf messages held in an io.ReaderAt.
type pbReader struct {
	r   io.ReaderAt
	buf [2 * binary64Len]byte
}

const binary64Len = 10 // the longest varint

// each calls fn for every field of the message in [off, end).
func (p *pbReader) each(off, end int64, fn func(wireField) error) error {
	for off < end {
		n := min(int64(len(p.buf)), end-off)
		b := p.buf[:n]
		if k, err := p.r.ReadAt(b, off); k < len(b) {
			return fmt.Errorf("reading model at offset %d: %v", off, err)
		}
		num, typ, tl := protowire.ConsumeTag(b)
		if tl < 0 {
			return fmt.Errorf("bad protobuf tag at offset %d", off)
		}
		f := wireField{num: num, typ: typ}
		var vl int
		switch typ {
		case protowire.VarintType:
			_, vl = protowire.ConsumeVarint(b[tl:])
		case protowire.Fixed32Type:
			vl = 4
		case protowire.Fixed64Type:
			vl = 8
		case protowire.BytesType:
			var l uint64
			l, vl = protowire.ConsumeVarint(b[tl:])
			if vl >= 0 {
				f.start = off + int64(tl+vl)
				if l > uint64(end-f.start) {
					return fmt.Errorf("protobuf field %d at offset %d runs past its message", num, off)
				}
				f.stop = f.start + int64(l)
				vl += int(l)
			}
		default:
			return fmt.Errorf("%w: protobuf wire type %d at offset %d", ErrPeekUnsupported, typ, off)
		}
		if vl < 0 || off+int64(tl)+int64(vl) > end {
			return fmt.Errorf("bad protobuf field %d at offset %d", num, off)
		}
		if err := fn(f); err != nil {
			return err
		}
		off += int64(tl) + int64(vl)
	}
	return nil
}

// stringField returns the last string field num of the message in [off, end).
func (p *pbReader) stringField(off, end int64, num protowire.Number) (string, error) {
	var s string
	err := p.each(off, end, func(f wireField) error {
		if f.num != num || f.typ != protowire.BytesType {
			return nil
		}
		if f.stop-f.start > 1<<16 {
			return fmt.Errorf("%w: name of %d bytes", ErrPeekUnsupported, f.stop-f.start)
		}
		b := make([]byte, f.stop-f.start)
		if _, err := p.r.ReadAt(b, f.start); err != nil {
			return err
		}
		s = string(b)
		return nil
	})
	return s, err
}

// readEntry reads the StringStringEntryProto (key = 1, value = 2) at fl, refusing one
// larger than limit bytes before reading it.
func readEntry(r io.ReaderAt, fl wireField, limit int64, what string) (key, val string, err error) {
	if fl.stop-fl.start > limit {
		return "", "", fmt.Errorf("%s of %d bytes", what, fl.stop-fl.start)
	}
	b := make([]byte, fl.stop-fl.start)
	if _, err := r.ReadAt(b, fl.start); err != nil {
		return "", "", err
	}
	err = wireFields(b, func(num protowire.Number, wt protowire.Type, _ uint64, v []byte) error {
		if wt == protowire.BytesType && num == 1 {
			key = string(v)
		} else if wt == protowire.BytesType && num == 2 {
			val = string(v)
		}
		return nil
	})
	return key, val, err
}

// wireFields splits an in-memory message into its fields (bytes values only, plus
// varints), calling fn for each.
func wireFields(b []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, bytes []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v uint64
		var val []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			val, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, v, val); err != nil {
			return err
		}
	}
	return nil
}

// parseValueInfo decodes a ValueInfoProto (name = 1, type = 2) whose type is a
// tensor: TypeProto.tensor_type = 1 {elem_type = 1, shape = 2 {dim = 1
// {dim_value = 1, dim_param = 2}}}.
func parseValueInfo(b []byte) (ValueInfo, error) {
	var info ValueInfo
	var typ []byte
	err := wireFields(b, func(num protowire.Number, wt protowire.Type, _ uint64, val []byte) error {
		switch {
		case num == 1 && wt == protowire.BytesType:
			info.Name = string(val)
		case num == 2 && wt == protowire.BytesType:
			typ = val
		}
		return nil
	})
	if err != nil {
		return info, err
	}
	var tensor []byte
	isTensor := false
	err = wireFields(typ, func(num protowire.Number, wt protowire.Type, _ uint64, val []byte) error {
		switch {
		case num == 1 && wt == protowire.BytesType:
			tensor, isTensor = val, true
		case num == 6: // denotation
		default:
			return fmt.Errorf("%w: %q is not a tensor (type field %d)", ErrPeekUnsupported, info.Name, num)
		}
		return nil
	})
	if err != nil {
		return info, err
	}
	if !isTensor {
		return info, fmt.Errorf("%w: %q has no tensor type", ErrPeekUnsupported, info.Name)
	}
	var elem uint64
	var shape []byte
	hasShape := false
	err = wireFields(tensor, func(num protowire.Number, wt protowire.Type, v uint64, val []byte) error {
		switch {
		case num == 1 && wt == protowire.VarintType:
			elem = v
		case num == 2 && wt == protowire.BytesType:
			shape, hasShape = val, true
		}
		return nil
	})
	if err != nil {
		return info, err
	}
	if elem == 0 {
		return info, fmt.Errorf("%w: %q has no element type", ErrPeekUnsupported, info.Name)
	}
	info.ElemType = int32(elem)
	if !hasShape {
		return info, nil // unknown rank: Shape stays nil
	}
	info.Shape = []int64{}
	err = wireFields(shape, func(num protowire.Number, wt protowire.Type, _ uint64, dim []byte) error {
		if num != 1 || wt != protowire.BytesType {
			return nil
		}
		d := int64(-1)
		err := wireFields(dim, func(num protowire.Number, wt protowire.Type, v uint64, _ []byte) error {
			switch {
			case num == 1 && wt == protowire.VarintType:
				d = int64(v)
			case num == 2: // dim_param: the oneof's last member wins
				d = -1
			}
			return nil
		})
		info.Shape = append(info.Shape, d)
		return err
	})
	return info, err
}

// PeekExternalData lists the distinct external-data locations (relative to the
// model's folder, as written) of a model file's graph initializers, reading only the
// initializers' small fields.
func PeekExternalData(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	p := pbReader{r: f}
	seen := map[string]bool{}
	var locs []string
	// ModelProto.graph (7) > GraphProto.initializer (5) > TensorProto.external_data (13)
	// > StringStringEntryProto key (1), value (2).
	in := func(num protowire.Number, then func(wireField) error) func(wireField) error {
		return func(fl wireField) error {
			if fl.num != num || fl.typ != protowire.BytesType {
				return nil
			}
			return then(fl)
		}
	}
	err = p.each(0, st.Size(), in(7, func(g wireField) error {
		return p.each(g.start, g.stop, in(5, func(t wireField) error {
			return p.each(t.start, t.stop, in(13, func(e wireField) error {
				key, val, err := readEntry(f, e, 1<<16, "external_data entry")
				if err == nil && key == "location" && !seen[val] {
					seen[val] = true
					locs = append(locs, val)
				}
				return err
			}))
		}))
	}))
	if err != nil {
		return nil, fmt.Errorf("%s: not an ONNX model (%v)", path, err)
	}
	return locs, nil
}
