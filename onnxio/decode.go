package onnxio

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Field numbers in onnx.proto on the path from a model to its weights.
const (
	modelGraph       protowire.Number = 7 // ModelProto.graph
	graphInitializer protowire.Number = 5 // GraphProto.initializer
	tensorRawData    protowire.Number = 9 // TensorProto.raw_data
)

// unmarshalShared is proto.Unmarshal(b, m) for a ModelProto, except that the raw_data
// of the main graph's initializers is not copied: each initializer's RawData is a
// capacity-limited sub-slice of b. Everything else is decoded by proto.Unmarshal from a
// "skeleton" copy of b without those payloads (the enclosing length prefixes rewritten),
// which is small when the weights are in raw_data, as exporters write them.
//
// The result is the one proto.Unmarshal gives, whatever b holds: repeated graph fields
// merge in order, so the i-th initializer seen on the wire is Graph.Initializer[i]; a
// tensor with raw_data repeated keeps the last, as protobuf does; fields of the wrong
// wire type are left in the skeleton, where protobuf keeps them as unknown fields. When
// b is malformed on the way to the payloads, or the skeleton does not decode, b is
// decoded as a whole by proto.Unmarshal, so errors are protobuf's own.
func unmarshalShared(b []byte) (*onnxpb.ModelProto, error) {
	var raws [][]byte // one per initializer in wire order; nil when it has no raw_data
	shared := false   // some raw_data was taken out
	skel, err := rewrite(b, modelGraph, func(g []byte) ([]byte, error) {
		return rewrite(g, graphInitializer, func(t []byte) ([]byte, error) {
			var raw []byte
			out, err := rewrite(t, tensorRawData, func(v []byte) ([]byte, error) {
				raw = v[:len(v):len(v)] // last one wins, as in protobuf merging
				shared = true
				return nil, nil
			})
			raws = append(raws, raw)
			return out, err
		})
	})
	m := &onnxpb.ModelProto{}
	if err == nil && shared {
		if err = proto.Unmarshal(skel, m); err == nil {
			if inits := m.GetGraph().GetInitializer(); len(inits) == len(raws) {
				for i, r := range raws {
					if r != nil {
						inits[i].RawData = r
					}
				}
				return m, nil
			}
		}
		m = &onnxpb.ModelProto{}
	}
	// Nothing to share (no raw_data on the path), or b does not parse: decode it as
	// protobuf does.
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, err
	}
	return m, nil
}

// rewrite returns the message b with the payload of every length-delimited field num
// passed through f: f returns the new payload, or nil to drop the field. When f leaves
// every payload as it was, rewrite returns b itself (no copy).
func rewrite(b []byte, num protowire.Number, f func([]byte) ([]byte, error)) ([]byte, error) {
	var out []byte // nil until the first change
	for rest := b; len(rest) > 0; {
		n, typ, tl := protowire.ConsumeTag(rest)
		if tl < 0 {
			return nil, protowire.ParseError(tl)
		}
		vl := protowire.ConsumeFieldValue(n, typ, rest[tl:])
		if vl < 0 {
			return nil, protowire.ParseError(vl)
		}
		field := rest[:tl+vl]
		rest = rest[tl+vl:]
		if n != num || typ != protowire.BytesType {
			if out != nil {
				out = append(out, field...)
			}
			continue
		}
		v, _ := protowire.ConsumeBytes(field[tl:])
		nv, err := f(v)
		if err != nil {
			return nil, err
		}
		if nv != nil && len(nv) == len(v) && (len(v) == 0 || &nv[0] == &v[0]) {
			// unchanged
			if out != nil {
				out = append(out, field...)
			}
			continue
		}
		if out == nil {
			done := len(b) - len(rest) - len(field)
			out = append(make([]byte, 0, done+1024), b[:done]...)
		}
		if nv != nil {
			out = protowire.AppendTag(out, n, typ)
			out = protowire.AppendBytes(out, nv)
		}
	}
	if out == nil {
		return b, nil
	}
	return out, nil
}
