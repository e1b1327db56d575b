package onnxio

import (
	"bufio"
	"io"
	"sort"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

var (
	// deterministic is the encoding of Encode and EncodeTo.
	deterministic = proto.MarshalOptions{Deterministic: true}
	// cached is deterministic reusing the sizes that deterministic.Size left in every
	// message of the model (EncodeTo calls it once, first), so that the sizes of nested
	// messages are not computed again at every level. Marshal itself does the same
	// (Size, then marshal with UseCachedSize), and checks each cached size it uses.
	cached = proto.MarshalOptions{Deterministic: true, UseCachedSize: true}
)

// streamAbove is the size above which EncodeTo writes a message or a bytes field piece
// by piece instead of marshalling it into one buffer.
const streamAbove = 64 << 10

// Encode serializes a model deterministically (map fields sorted), so the same model
// always gives the same bytes. It holds the whole encoding in memory; EncodeTo writes
// the same bytes to a writer without doing so.
func Encode(m *onnxpb.ModelProto) ([]byte, error) {
	return deterministic.Marshal(m)
}

// EncodeTo writes m to w exactly as Encode encodes it (byte for byte), without holding
// the whole encoding in memory: messages larger than 64 KiB are written field by field,
// in the order Go's deterministic Marshal uses (known fields by number, then unknown
// fields), and bytes fields larger than that, such as the weights' raw_data, go from the
// model to w without a copy. Other fields are encoded one run of fields at a time (so a
// large typed field such as float_data is held encoded while it is written). If w is a
// *bufio.Writer, EncodeTo writes through it and leaves flushing to the caller;
// otherwise it buffers and flushes before it returns. m must not change while it runs.
func EncodeTo(w io.Writer, m *onnxpb.ModelProto) error {
	return encodeTo(w, m, streamAbove)
}

// encodeTo is EncodeTo for any message, streaming messages and bytes fields larger than
// above bytes (tests set it to 0 to stream everything).
func encodeTo(w io.Writer, m proto.Message, above int) error {
	size := deterministic.Size(m)
	bw, ok := w.(*bufio.Writer)
	if !ok {
		bw = bufio.NewWriterSize(w, min(1<<20, max(4096, size)))
	}
	e := &encoder{w: bw, above: above}
	e.message(m.ProtoReflect(), size)
	if e.err == nil && !ok {
		e.err = bw.Flush()
	}
	return e.err
}

type encoder struct {
	w     *bufio.Writer
	above int   // messages and bytes fields larger than this are streamed
	err   error // the first error; once set, nothing more is written
}

// field is one populated field of a message.
type field struct {
	fd protoreflect.FieldDescriptor
	v  protoreflect.Value
}

// message writes m, whose encoded size is size, as deterministic Marshal would.
func (e *encoder) message(m protoreflect.Message, size int) {
	if e.err != nil {
		return
	}
	if size <= e.above {
		e.marshal(m.Interface())
		return
	}
	var fields []field
	ext := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		ext = ext || fd.IsExtension()
		fields = append(fields, field{fd, v})
		return true
	})
	if ext {
		// Marshal writes extensions first; onnx.proto has none, so keep it simple.
		e.marshal(m.Interface())
		return
	}
	sort.Slice(fields, func(i, j int) bool { return fields[i].fd.Number() < fields[j].fd.Number() })

	// Runs of fields that are not streamed are marshalled together from a shallow copy
	// of m holding only them (the values are shared, nothing is deep-copied).
	var pending protoreflect.Message
	flush := func() {
		if pending != nil {
			e.marshal(pending.Interface())
			pending = nil
		}
	}
	for _, f := range fields {
		fd, v := f.fd, f.v
		switch {
		case fd.Kind() == protoreflect.MessageKind && fd.IsList():
			flush()
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				sub := l.Get(i).Message()
				n := cached.Size(sub.Interface())
				e.lenTag(fd.Number(), n)
				e.message(sub, n)
			}
		case fd.Kind() == protoreflect.MessageKind && !fd.IsMap():
			flush()
			sub := v.Message()
			n := cached.Size(sub.Interface())
			e.lenTag(fd.Number(), n)
			e.message(sub, n)
		case fd.Kind() == protoreflect.BytesKind && !fd.IsList() && len(v.Bytes()) > e.above:
			flush()
			e.lenTag(fd.Number(), len(v.Bytes()))
			e.write(v.Bytes())
		default:
			if pending == nil {
				pending = m.New()
			}
			pending.Set(fd, v)
		}
	}
	flush()
	// Marshal appends the unknown fields, as they were read, after the known ones.
	if u := m.GetUnknown(); len(u) > 0 {
		e.write(u)
	}
}

// marshal writes the deterministic encoding of a (small) message.
func (e *encoder) marshal(m proto.Message) {
	if e.err != nil {
		return
	}
	if n := cached.Size(m); n > e.w.Available() && n <= e.w.Size() {
		// Marshal into the buffer itself rather than into a new slice.
		if e.err = e.w.Flush(); e.err != nil {
			return
		}
	}
	b, err := cached.MarshalAppend(e.w.AvailableBuffer(), m)
	if err != nil {
		e.err = err
		return
	}
	e.write(b)
}

// lenTag writes the tag of the length-delimited field num and the length n.
func (e *encoder) lenTag(num protowire.Number, n int) {
	if e.err != nil {
		return
	}
	b := protowire.AppendTag(e.w.AvailableBuffer(), num, protowire.BytesType)
	e.write(protowire.AppendVarint(b, uint64(n)))
}

func (e *encoder) write(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}
