package onnxio_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

var deterministic = proto.MarshalOptions{Deterministic: true}

// streamMins are the thresholds EncodeTo is checked with: every message and bytes
// field streamed, small ones only, and EncodeTo's own.
var streamMins = []int{0, 7, 100, 64 << 10}

// checkEncodeTo fails t unless EncodeTo (at every threshold in streamMins) writes
// exactly what deterministic Marshal returns for m, and returns those bytes.
func checkEncodeTo(t testing.TB, what string, m *onnxpb.ModelProto) []byte {
	t.Helper()
	want, err := deterministic.Marshal(m)
	if err != nil {
		t.Fatalf("%s: Marshal: %v", what, err)
	}
	if enc, err := onnxio.Encode(m); err != nil || !bytes.Equal(enc, want) {
		t.Fatalf("%s: Encode differs from deterministic Marshal (err %v)", what, err)
	}
	for _, min := range streamMins {
		var buf bytes.Buffer
		if err := onnxio.EncodeToMin(&buf, m, min); err != nil {
			t.Fatalf("%s: EncodeTo (streaming above %d bytes): %v", what, min, err)
		}
		if !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("%s: EncodeTo (streaming above %d bytes) wrote %d bytes that differ from Marshal's %d (first difference at %d)",
				what, min, buf.Len(), len(want), firstDiff(buf.Bytes(), want))
		}
	}
	var buf bytes.Buffer
	if err := onnxio.EncodeTo(&buf, m); err != nil || !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("%s: EncodeTo differs from Marshal (err %v)", what, err)
	}
	return want
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestEncodeToFixtures(t *testing.T) {
	for _, f := range fixtures(t) {
		orig, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		copied := &onnxpb.ModelProto{}
		if err := proto.Unmarshal(orig, copied); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(checkEncodeTo(t, f, copied), orig) {
			t.Fatalf("%s: Marshal does not reproduce the file", f)
		}
		loaded, err := onnxio.Load(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(checkEncodeTo(t, f+" (Load)", loaded), orig) {
			t.Fatalf("%s: the loaded model does not encode to the file", f)
		}
	}
}

func TestEncodeToSynthetic(t *testing.T) {
	for _, big := range []int{3, 100, 70 << 10} {
		m := synthModel(big)
		b := checkEncodeTo(t, fmt.Sprintf("synthetic model, %d-byte tensors", big), m)
		// Decode (zero-copy) gives back the same model.
		back, err := onnxio.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(back, m) {
			t.Fatalf("synthetic model (%d): Decode does not give the model back", big)
		}
		checkEncodeTo(t, "decoded synthetic model", back)
	}
}

func TestEncodeToExternalData(t *testing.T) {
	// What SaveWith encodes after it has moved the data out: the same model, external.
	m := synthModel(70 << 10)
	for i, x := range m.Graph.Initializer {
		if x.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
			continue
		}
		x.RawData, x.FloatData, x.Int64Data, x.DoubleData = nil, nil, nil, nil
		x.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
		x.ExternalData = []*onnxpb.StringStringEntryProto{
			{Key: proto.String("location"), Value: proto.String("m.data")},
			{Key: proto.String("offset"), Value: proto.String(fmt.Sprint(64 * i))},
			{Key: proto.String("length"), Value: proto.String("64")},
		}
	}
	checkEncodeTo(t, "external data entries", m)
}

// TestSaveStreams checks that Save writes what Encode returns, inline and with a side
// file, for a model whose every large part takes the streamed path.
func TestSaveStreams(t *testing.T) {
	m := synthModel(70 << 10)
	// SaveWith(ExternalData) needs initializers whose data it can move.
	var keep []*onnxpb.TensorProto
	for _, x := range m.Graph.Initializer {
		if _, err := onnxio.Bytes(x); err == nil && x.GetDataLocation() != onnxpb.TensorProto_EXTERNAL {
			keep = append(keep, x)
		}
	}
	m.Graph.Initializer = keep
	want, _ := onnxio.Encode(m)
	dir := t.TempDir()
	p := dir + "/m.onnx"
	if err := onnxio.Save(p, m); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, want) {
		t.Fatal("Save wrote other bytes than Encode returns")
	}
	if err := onnxio.SaveWith(p, m, onnxio.SaveOptions{ExternalData: "m.data", Threshold: 16}); err != nil {
		t.Fatal(err)
	}
	if b, _ := onnxio.Encode(m); !bytes.Equal(b, want) {
		t.Fatal("SaveWith changed the model")
	}
	got, _ := os.ReadFile(p)
	ext := &onnxpb.ModelProto{}
	if err := proto.Unmarshal(got, ext); err != nil {
		t.Fatal(err)
	}
	if b := checkEncodeTo(t, "saved with external data", ext); !bytes.Equal(b, got) {
		t.Fatal("the model file written with external data is not its deterministic encoding")
	}
	if data, err := os.ReadFile(dir + "/m.data"); err != nil || len(data) < 2*(70<<10) || len(got) > len(want)-len(data)+1024 { // + the external_data entries
		t.Fatalf("model file with external data is %d bytes of %d, side file %d bytes (%v): data not moved", len(got), len(want), len(data), err)
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(b []byte) (int, error) {
	if w.n < len(b) {
		return 0, errors.New("disk full")
	}
	w.n -= len(b)
	return len(b), nil
}

func TestEncodeToWriteError(t *testing.T) {
	m := synthModel(300 << 10)
	for _, n := range []int{0, 100, 1 << 20} {
		if err := onnxio.EncodeTo(&failWriter{n}, m); err == nil || err.Error() != "disk full" {
			t.Errorf("writer failing after %d bytes: EncodeTo returned %v", n, err)
		}
	}
	// A *bufio.Writer is written through and left unflushed.
	var buf bytes.Buffer
	bw := bufio.NewWriterSize(&buf, 4096)
	small := synthModel(3)
	if err := onnxio.EncodeTo(bw, small); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	if want, _ := onnxio.Encode(small); !bytes.Equal(buf.Bytes(), want) {
		t.Error("EncodeTo through a bufio.Writer differs from Encode")
	}
}

// TestDecodeShares checks the zero-copy decoding: initializers' raw_data lies in the
// input, capacity-limited, and changing one tensor changes neither another nor the input.
func TestDecodeShares(t *testing.T) {
	orig, _ := os.ReadFile(fixtures(t)[0])
	b := bytes.Clone(orig)
	m, err := onnxio.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&b[0]))+uintptr(len(b))
	shared := 0
	for _, x := range m.Graph.Initializer {
		if len(x.RawData) == 0 {
			continue
		}
		if p := uintptr(unsafe.Pointer(&x.RawData[0])); p < lo || p >= hi {
			t.Fatalf("initializer %q: raw_data copied", x.GetName())
		}
		if cap(x.RawData) != len(x.RawData) {
			t.Fatalf("initializer %q: raw_data has capacity %d beyond its %d bytes", x.GetName(), cap(x.RawData), len(x.RawData))
		}
		shared++
	}
	if shared == 0 {
		t.Fatal("no initializer with raw_data in the fixture")
	}
	x := m.Graph.Initializer[0]
	v, _ := onnxio.Floats(x)
	v[0]++
	if err := onnxio.SetFloats(x, v); err != nil {
		t.Fatal(err)
	}
	x.RawData = append(x.RawData, 1, 2, 3, 4) // must not spill into the next tensor
	if !bytes.Equal(b, orig) {
		t.Fatal("SetFloats or append on a decoded tensor changed the buffer it was decoded from")
	}
}

// TestDecodeWireCases checks that the zero-copy Decode gives exactly what
// proto.Unmarshal gives for inputs that take its unusual paths.
func TestDecodeWireCases(t *testing.T) {
	msg := func(fields ...[]byte) []byte { return bytes.Join(fields, nil) }
	bytesField := func(n protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, n, protowire.BytesType), v)
	}
	varint := func(n protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, n, protowire.VarintType), v)
	}
	raw := func(s string) []byte { return bytesField(9, []byte(s)) }
	tensor := func(name string, fields ...[]byte) []byte {
		return bytesField(5, msg(append([][]byte{bytesField(8, []byte(name)), varint(2, 2), varint(1, uint64(len(name)))}, fields...)...))
	}
	graph := func(fields ...[]byte) []byte { return bytesField(7, msg(fields...)) }
	ir := varint(1, 8)
	cases := map[string][]byte{
		"plain":                      msg(ir, graph(tensor("abcd", raw("abcd")), tensor("xy", raw("xy")))),
		"graph repeated (merged)":    msg(ir, graph(tensor("a", raw("a"))), varint(5, 3), graph(bytesField(2, []byte("g")), tensor("b", raw("b")))),
		"raw_data repeated":          msg(ir, graph(tensor("abc", raw("zzz"), raw("abc")))),
		"empty raw_data":             msg(ir, graph(tensor("", raw("")))),
		"raw_data only":              msg(ir, graph(bytesField(5, raw("q")))),
		"raw_data of wrong type":     msg(ir, graph(tensor("ab", varint(9, 5), raw("ab"), varint(9, 6)))),
		"initializer of wrong type":  msg(ir, graph(varint(5, 1), tensor("ab", raw("ab")))),
		"graph of wrong type":        msg(ir, varint(7, 1), graph(tensor("ab", raw("ab")))),
		"unknown fields around":      msg(varint(99, 1), ir, graph(varint(98, 2), tensor("ab", varint(97, 3), raw("ab"), varint(96, 4)), varint(95, 5)), varint(94, 6)),
		"no raw_data":                msg(ir, graph(tensor("ab"))),
		"graph truncated":            msg(ir, protowire.AppendTag(nil, 7, protowire.BytesType), []byte{10, 1}),
		"tensor malformed":           msg(ir, graph(bytesField(5, []byte{0x4a, 0x05, 1}))),
		"raw_data past the end":      msg(ir, graph(bytesField(5, []byte{0x4a, 0x7f, 1, 2}))),
		"field number 0 in a tensor": msg(ir, graph(bytesField(5, msg(raw("a"), []byte{0x00, 0x01})))),
		"group in a tensor":          msg(ir, graph(tensor("ab", protowire.AppendTag(nil, 20, protowire.StartGroupType), varint(1, 1), protowire.AppendTag(nil, 20, protowire.EndGroupType), raw("ab")))),
	}
	for name, b := range cases {
		checkDecodeMatches(t, name, b)
	}
}

// checkDecodeMatches fails t unless onnxio.Decode(b) agrees with proto.Unmarshal(b): it
// fails when Unmarshal fails (or the model has no IR version or graph) and otherwise
// gives a model with the same deterministic encoding, which EncodeTo reproduces.
func checkDecodeMatches(t testing.TB, name string, b []byte) {
	t.Helper()
	want := &onnxpb.ModelProto{}
	uerr := proto.Unmarshal(b, want)
	got, derr := onnxio.Decode(b)
	if uerr != nil || len(b) == 0 || want.GetIrVersion() <= 0 || want.Graph == nil {
		if derr == nil {
			t.Fatalf("%s: Decode accepted what proto.Unmarshal rejects (%v) or what is no model", name, uerr)
		}
		return
	}
	if derr != nil {
		t.Fatalf("%s: Decode: %v", name, derr)
	}
	wb := checkEncodeTo(t, name, want)
	if gb := checkEncodeTo(t, name+" (Decode)", got); !bytes.Equal(gb, wb) {
		t.Fatalf("%s: Decode gives another model than proto.Unmarshal", name)
	}
}

// FuzzEncodeTo decodes arbitrary bytes as a ModelProto; whatever decodes must be
// written by EncodeTo exactly as deterministic Marshal writes it, and onnxio.Decode
// (zero-copy) must agree with proto.Unmarshal. The seed corpus in
// testdata/fuzz/FuzzEncodeTo holds the encodings of synthModel(3), synthModel(40) and
// testdata/hf_op17.onnx cut to 20 nodes and 6 initializers of at most 2 floats.
func FuzzEncodeTo(f *testing.F) {
	b, _ := onnxio.Encode(synthModel(3))
	f.Add(b)
	f.Add([]byte("\x08\x07\x3a\x06\x2a\x04\x4a\x02\x01\x02"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m := &onnxpb.ModelProto{}
		uerr := proto.Unmarshal(b, m)
		var want []byte
		if uerr == nil {
			want = checkEncodeTo(t, "fuzz input", m)
		}
		got, derr := onnxio.Decode(b)
		if uerr != nil || len(b) == 0 || m.GetIrVersion() <= 0 || m.Graph == nil {
			if derr == nil {
				t.Fatalf("Decode accepted what proto.Unmarshal rejects (%v) or what is no model", uerr)
			}
			return
		}
		if derr != nil {
			t.Fatalf("Decode: %v", derr)
		}
		var buf bytes.Buffer
		if err := onnxio.EncodeToMin(&buf, got, 0); err != nil || !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("the model Decode gives encodes to other bytes than proto.Unmarshal's (%v)", err)
		}
	})
}

// synthModel builds a model that uses every kind of field onnx.proto has, with unknown
// fields at several depths, tensors in every storage form (raw_data, typed fields,
// external) and subgraphs in node attributes; the large tensors hold big bytes.
func synthModel(big int) *onnxpb.ModelProto {
	s := proto.String
	i64 := proto.Int64
	unknown := func(m proto.Message, n protowire.Number) {
		var u []byte
		u = protowire.AppendVarint(protowire.AppendTag(u, n, protowire.VarintType), uint64(n))
		u = protowire.AppendBytes(protowire.AppendTag(u, n+1, protowire.BytesType), bytes.Repeat([]byte{byte(n)}, 3))
		u = protowire.AppendFixed32(protowire.AppendTag(u, n+2, protowire.Fixed32Type), 7)
		m.ProtoReflect().SetUnknown(append(m.ProtoReflect().GetUnknown(), u...))
	}
	rawBytes := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*31) + seed
		}
		return b
	}
	nf := max(big/4, 1)
	floats := make([]float32, nf)
	for i := range floats {
		floats[i] = float32(i) * 0.25
	}
	entry := func(k, v string) *onnxpb.StringStringEntryProto {
		return &onnxpb.StringStringEntryProto{Key: s(k), Value: s(v)}
	}
	tensorType := func(elem int32, dims ...any) *onnxpb.TypeProto {
		shape := &onnxpb.TensorShapeProto{}
		for _, d := range dims {
			dim := &onnxpb.TensorShapeProto_Dimension{}
			switch d := d.(type) {
			case int:
				dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}
			case string:
				dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}
				dim.Denotation = s("DATA_BATCH")
			}
			shape.Dim = append(shape.Dim, dim)
		}
		return &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(elem), Shape: shape}}}
	}
	rawTensor := func(name string, n int, seed byte) *onnxpb.TensorProto {
		t := &onnxpb.TensorProto{Name: s(name), DataType: proto.Int32(onnxio.Float), Dims: []int64{int64(n / 4)}, RawData: rawBytes(n/4*4, seed)}
		unknown(t, 100)
		return t
	}
	var subgraph func(name string, depth int) *onnxpb.GraphProto
	subgraph = func(name string, depth int) *onnxpb.GraphProto {
		g := &onnxpb.GraphProto{
			Name:        s(name),
			Initializer: []*onnxpb.TensorProto{rawTensor(name+".w", big, byte(depth))},
			Output:      []*onnxpb.ValueInfoProto{{Name: s(name + ".y"), Type: tensorType(onnxio.Float, 1)}},
			Node:        []*onnxpb.NodeProto{{OpType: s("Identity"), Input: []string{name + ".w"}, Output: []string{name + ".y"}}},
		}
		if depth > 0 {
			g.Node = append(g.Node, &onnxpb.NodeProto{
				OpType: s("Loop"), Input: []string{"", ""}, Output: []string{name + ".loop"},
				Attribute: []*onnxpb.AttributeProto{{Name: s("body"), Type: onnxpb.AttributeProto_GRAPH.Enum(), G: subgraph(name+".body", depth-1)}},
			})
		}
		unknown(g, 200)
		return g
	}

	g := &onnxpb.GraphProto{
		Name:      s("main"),
		DocString: s("synthetic graph"),
		Input: []*onnxpb.ValueInfoProto{
			{Name: s("x"), Type: tensorType(onnxio.Float, "batch", 3, 224), DocString: s("input")},
			{Name: s("seq"), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_SequenceType{SequenceType: &onnxpb.TypeProto_Sequence{ElemType: tensorType(onnxio.Int64)}}}},
			{Name: s("map"), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_MapType{MapType: &onnxpb.TypeProto_Map{KeyType: proto.Int32(onnxio.Int64), ValueType: tensorType(onnxio.Float)}}}},
			{Name: s("opt"), Type: &onnxpb.TypeProto{Denotation: s("TENSOR"), Value: &onnxpb.TypeProto_OptionalType{OptionalType: &onnxpb.TypeProto_Optional{ElemType: tensorType(onnxio.Bool, 0)}}}},
		},
		Output:                 []*onnxpb.ValueInfoProto{{Name: s("y"), Type: tensorType(onnxio.Float, "batch", 1000)}},
		ValueInfo:              []*onnxpb.ValueInfoProto{{Name: s("h"), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_SparseTensorType{SparseTensorType: &onnxpb.TypeProto_SparseTensor{ElemType: proto.Int32(onnxio.Float)}}}}, {Name: s("o"), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_OpaqueType{OpaqueType: &onnxpb.TypeProto_Opaque{Domain: s("d"), Name: s("n")}}}}},
		QuantizationAnnotation: []*onnxpb.TensorAnnotation{{TensorName: s("h"), QuantParameterTensorNames: []*onnxpb.StringStringEntryProto{entry("SCALE_TENSOR", "s"), entry("ZERO_POINT_TENSOR", "z")}}},
		Initializer: []*onnxpb.TensorProto{
			rawTensor("w.raw", big, 1),
			{Name: s("w.float_data"), DataType: proto.Int32(onnxio.Float), Dims: []int64{int64(nf)}, FloatData: floats, DocString: s("typed")},
			{Name: s("w.int64_data"), DataType: proto.Int32(onnxio.Int64), Dims: []int64{3}, Int64Data: []int64{-1, 0, 1 << 40}},
			{Name: s("w.int32_data"), DataType: proto.Int32(onnxio.Int32), Dims: []int64{2}, Int32Data: []int32{-7, 7}},
			{Name: s("w.double_data"), DataType: proto.Int32(int32(onnxpb.TensorProto_DOUBLE)), Dims: []int64{2}, DoubleData: []float64{1.5, -2}},
			{Name: s("w.uint64_data"), DataType: proto.Int32(int32(onnxpb.TensorProto_UINT64)), Dims: []int64{1}, Uint64Data: []uint64{1 << 63}},
			{Name: s("w.string_data"), DataType: proto.Int32(int32(onnxpb.TensorProto_STRING)), Dims: []int64{2}, StringData: [][]byte{[]byte("héllo"), rawBytes(big, 9)}},
			{Name: s("w.empty"), DataType: proto.Int32(onnxio.Float), Dims: []int64{0}, RawData: []byte{}},
			{Name: s("w.segment"), DataType: proto.Int32(onnxio.Float), Dims: []int64{1}, RawData: rawBytes(4, 2), Segment: &onnxpb.TensorProto_Segment{Begin: i64(0), End: i64(1)}},
			{Name: s("w.external"), DataType: proto.Int32(onnxio.Float), Dims: []int64{16}, DataLocation: onnxpb.TensorProto_EXTERNAL.Enum(),
				ExternalData: []*onnxpb.StringStringEntryProto{entry("location", "w.bin"), entry("offset", "0"), entry("length", "64"), entry("checksum", "x")}},
			rawTensor("w.raw2", big+8, 3),
		},
		SparseInitializer: []*onnxpb.SparseTensorProto{{
			Values:  rawTensor("sp.values", big, 4),
			Indices: &onnxpb.TensorProto{Name: s("sp.indices"), DataType: proto.Int32(onnxio.Int64), Dims: []int64{1}, Int64Data: []int64{5}},
			Dims:    []int64{10},
		}},
		Node: []*onnxpb.NodeProto{
			{Name: s("conv"), OpType: s("Conv"), Domain: s(""), Input: []string{"x", "w.raw"}, Output: []string{"c"}, DocString: s("a conv"),
				Attribute: []*onnxpb.AttributeProto{
					{Name: s("strides"), Type: onnxpb.AttributeProto_INTS.Enum(), Ints: []int64{16, 16}},
					{Name: s("alpha"), Type: onnxpb.AttributeProto_FLOAT.Enum(), F: proto.Float32(0.5)},
					{Name: s("axis"), Type: onnxpb.AttributeProto_INT.Enum(), I: i64(-1)},
					{Name: s("mode"), Type: onnxpb.AttributeProto_STRING.Enum(), S: []byte("constant")},
					{Name: s("scales"), Type: onnxpb.AttributeProto_FLOATS.Enum(), Floats: []float32{1, 2}},
					{Name: s("names"), Type: onnxpb.AttributeProto_STRINGS.Enum(), Strings: [][]byte{[]byte("a"), rawBytes(big, 5)}},
					{Name: s("ref"), RefAttrName: s("outer"), Type: onnxpb.AttributeProto_INT.Enum()},
					{Name: s("tp"), Type: onnxpb.AttributeProto_TYPE_PROTO.Enum(), Tp: tensorType(onnxio.Float, 2)},
				}},
			{OpType: s("Constant"), Output: []string{"k"}, Attribute: []*onnxpb.AttributeProto{{Name: s("value"), Type: onnxpb.AttributeProto_TENSOR.Enum(), T: rawTensor("k", big, 6), DocString: s("big constant")}}},
			{OpType: s("Constant"), Output: []string{"sk"}, Attribute: []*onnxpb.AttributeProto{{Name: s("sparse_value"), Type: onnxpb.AttributeProto_SPARSE_TENSOR.Enum(), SparseTensor: &onnxpb.SparseTensorProto{Values: rawTensor("sv", big, 7), Dims: []int64{100}}}}},
			{OpType: s("If"), Input: []string{"cond"}, Output: []string{"r"}, Attribute: []*onnxpb.AttributeProto{
				{Name: s("then_branch"), Type: onnxpb.AttributeProto_GRAPH.Enum(), G: subgraph("then", 2)},
				{Name: s("else_branch"), Type: onnxpb.AttributeProto_GRAPH.Enum(), G: subgraph("else", 1)},
			}},
			{OpType: s("Custom"), Domain: s("com.example"), Output: []string{"z"}, Attribute: []*onnxpb.AttributeProto{
				{Name: s("graphs"), Type: onnxpb.AttributeProto_GRAPHS.Enum(), Graphs: []*onnxpb.GraphProto{subgraph("g0", 0), subgraph("g1", 1)}},
				{Name: s("tensors"), Type: onnxpb.AttributeProto_TENSORS.Enum(), Tensors: []*onnxpb.TensorProto{rawTensor("t0", big, 8), {Name: s("t1"), DataType: proto.Int32(onnxio.Float), FloatData: floats}}},
				{Name: s("sparse_tensors"), Type: onnxpb.AttributeProto_SPARSE_TENSORS.Enum(), SparseTensors: []*onnxpb.SparseTensorProto{{Dims: []int64{1}}}},
				{Name: s("type_protos"), Type: onnxpb.AttributeProto_TYPE_PROTOS.Enum(), TypeProtos: []*onnxpb.TypeProto{tensorType(onnxio.Int32), {}}},
			}},
		},
	}
	unknown(g, 300)
	unknown(g.Node[0], 310)
	unknown(g.Node[0].Attribute[0], 320)
	unknown(g.Input[0].Type, 330)

	m := &onnxpb.ModelProto{
		IrVersion:       i64(8),
		ProducerName:    s("synth"),
		ProducerVersion: s("1"),
		Domain:          s("org.example"),
		ModelVersion:    i64(3),
		DocString:       s("a model with every kind of field"),
		OpsetImport:     []*onnxpb.OperatorSetIdProto{{Domain: s(""), Version: i64(17)}, {Domain: s("com.example"), Version: i64(1)}},
		Graph:           g,
		MetadataProps:   []*onnxpb.StringStringEntryProto{entry("sptctl.plan", "abc"), entry("", ""), entry("big", string(rawBytes(big, 10)))},
		TrainingInfo: []*onnxpb.TrainingInfoProto{{
			Initialization:        subgraph("init", 0),
			Algorithm:             subgraph("algo", 1),
			InitializationBinding: []*onnxpb.StringStringEntryProto{entry("w.raw", "init.w")},
			UpdateBinding:         []*onnxpb.StringStringEntryProto{entry("w.raw", "algo.w")},
		}},
		Functions: []*onnxpb.FunctionProto{{
			Name: s("F"), Domain: s("com.example"), Input: []string{"a"}, Output: []string{"b"}, Attribute: []string{"alpha"},
			Node:        []*onnxpb.NodeProto{{OpType: s("Constant"), Output: []string{"b"}, Attribute: []*onnxpb.AttributeProto{{Name: s("value"), T: rawTensor("fc", big, 11)}}}},
			OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: s(""), Version: i64(17)}},
			DocString:   s("a function"),
		}},
	}
	unknown(m, 400)
	unknown(m.Graph.Initializer[0], 410)
	return m
}
