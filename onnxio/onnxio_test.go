package onnxio_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

func fixtures(t testing.TB) []string {
	t.Helper()
	fs, _ := filepath.Glob("../testdata/*.onnx")
	if len(fs) == 0 {
		t.Fatal("no fixtures in ../testdata")
	}
	return fs
}

func TestRoundTripByteIdentical(t *testing.T) {
	for _, f := range fixtures(t) {
		orig, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m, err := onnxio.Load(f)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "m.onnx")
		if err := onnxio.Save(out, m); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, orig) {
			t.Errorf("%s: saved %d bytes differ from the %d read", f, len(got), len(orig))
		}
	}
}

func TestExternalDataRoundTrip(t *testing.T) {
	f := fixtures(t)[0]
	orig, _ := os.ReadFile(f)
	m, err := onnxio.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "m.onnx")
	if err := onnxio.SaveWith(out, m, onnxio.SaveOptions{ExternalData: "m.data", Threshold: 256}); err != nil {
		t.Fatal(err)
	}
	// The caller's model is untouched.
	if b, _ := onnxio.Encode(m); !bytes.Equal(b, orig) {
		t.Fatal("SaveWith changed the model it saved")
	}
	small, _ := os.ReadFile(out)
	data, err := os.ReadFile(filepath.Join(dir, "m.data"))
	if err != nil {
		t.Fatal(err)
	}
	if len(small) >= len(orig) || len(data) == 0 {
		t.Fatalf("model %d bytes, side file %d bytes: nothing moved out", len(small), len(data))
	}
	back, err := onnxio.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := onnxio.Encode(back); !bytes.Equal(b, orig) {
		t.Error("model read back from external data differs from the original")
	}
}

func TestAutomaticExternalDataOverLimit(t *testing.T) {
	m, err := onnxio.Load(fixtures(t)[0])
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "big.onnx")
	if err := onnxio.SaveWith(out, m, onnxio.SaveOptions{Limit: 10_000}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "big.onnx.data")); err != nil {
		t.Fatalf("no side file written for a model over the limit: %v", err)
	}
	if _, err := onnxio.Load(out); err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	good, _ := os.ReadFile(fixtures(t)[0])
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	m, _ := onnxio.Load(fixtures(t)[0])
	ext := filepath.Join(dir, "ext.onnx")
	if err := onnxio.SaveWith(ext, m, onnxio.SaveOptions{ExternalData: "ext.data"}); err != nil {
		t.Fatal(err)
	}
	extBytes, _ := os.ReadFile(ext)
	extData, _ := os.ReadFile(filepath.Join(dir, "ext.data"))
	missingDir := filepath.Join(dir, "missing")
	os.Mkdir(missingDir, 0o755)
	missing := filepath.Join(missingDir, "m.onnx")
	os.WriteFile(missing, extBytes, 0o644)
	shortDir := filepath.Join(dir, "short")
	os.Mkdir(shortDir, 0o755)
	short := filepath.Join(shortDir, "m.onnx")
	os.WriteFile(short, extBytes, 0o644)
	os.WriteFile(filepath.Join(shortDir, "ext.data"), extData[:len(extData)/2], 0o644)

	bad := proto.Clone(m).(*onnxpb.ModelProto)
	bad.Graph.Initializer[0].RawData = bad.Graph.Initializer[0].RawData[4:]
	badBytes, _ := onnxio.Encode(bad)

	cases := []struct{ name, path, want string }{
		{"not protobuf", write("text.onnx", []byte("hello, this is not a model\n")), "not an ONNX model"},
		{"empty", write("empty.onnx", nil), "empty file"},
		{"truncated", write("trunc.onnx", good[:len(good)/3]), "not an ONNX model"},
		{"missing external file", missing, "external data file"},
		{"short external file", short, "too short"},
		{"length disagrees with shape", write("len.onnx", badBytes), "needs"},
		{"no such file", filepath.Join(dir, "nope.onnx"), "no such file"},
	}
	for _, c := range cases {
		_, err := onnxio.Load(c.path)
		if err == nil {
			t.Errorf("%s: loaded without error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("%s: error %q should name the file and say %q", c.name, err, c.want)
		}
	}
}

func TestFloatViews(t *testing.T) {
	typed := &onnxpb.TensorProto{Name: proto.String("w"), DataType: proto.Int32(onnxio.Float), Dims: []int64{2, 2}, FloatData: []float32{1, 2, 3, 4}}
	v, err := onnxio.Floats(typed)
	if err != nil || len(v) != 4 || v[3] != 4 {
		t.Fatalf("Floats(float_data) = %v, %v", v, err)
	}
	if err := onnxio.SetFloats(typed, []float32{5, 6, 7, 8}); err != nil {
		t.Fatal(err)
	}
	if typed.FloatData != nil || len(typed.RawData) != 16 {
		t.Fatalf("SetFloats should store raw_data only: %d float_data, %d raw bytes", len(typed.FloatData), len(typed.RawData))
	}
	v, _ = onnxio.Floats(typed)
	if v[0] != 5 || v[3] != 8 {
		t.Fatalf("after SetFloats: %v", v)
	}
	if err := onnxio.SetFloats(typed, []float32{1}); err == nil {
		t.Error("SetFloats accepted 1 value for a 2x2 tensor")
	}
	// ReplaceFloats stores the same bytes as SetFloats and checks the same way: over
	// the old raw_data (the same memory), into the empty tensor of float_data, or over
	// raw_data of another size
	want := slices.Clone(typed.RawData)
	old := typed.RawData
	if err := onnxio.SetFloats(typed, []float32{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	old = typed.RawData
	if err := onnxio.ReplaceFloats(typed, []float32{5, 6, 7, 8}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(typed.RawData, want) || typed.FloatData != nil || &typed.RawData[0] != &old[0] {
		t.Errorf("ReplaceFloats stored % x (in place: %v), SetFloats % x", typed.RawData, &typed.RawData[0] == &old[0], want)
	}
	for _, tp := range []*onnxpb.TensorProto{
		{DataType: proto.Int32(onnxio.Float), Dims: []int64{2, 2}, FloatData: []float32{0, 0, 0, 0}},
		{DataType: proto.Int32(onnxio.Float), Dims: []int64{2, 2}, RawData: make([]byte, 4)},
	} {
		if err := onnxio.ReplaceFloats(tp, []float32{5, 6, 7, 8}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tp.RawData, want) || tp.FloatData != nil {
			t.Errorf("ReplaceFloats stored % x, SetFloats % x", tp.RawData, want)
		}
	}
	if err := onnxio.ReplaceFloats(typed, []float32{1}); err == nil {
		t.Error("ReplaceFloats accepted 1 value for a 2x2 tensor")
	}
	if err := onnxio.ReplaceFloats(&onnxpb.TensorProto{DataType: proto.Int32(onnxio.Int64), Dims: []int64{1}}, []float32{1}); err == nil {
		t.Error("ReplaceFloats accepted an INT64 tensor")
	}
	i, err := onnxio.NewInt64("i", []int64{3}, []int64{-1, 0, 7})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := onnxio.Int64s(i); got[0] != -1 || got[2] != 7 {
		t.Errorf("Int64s = %v", got)
	}
	if _, err := onnxio.Floats(i); err == nil {
		t.Error("Floats accepted an INT64 tensor")
	}
}

func TestWriteFileAtomicLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out.onnx")
	os.WriteFile(p, []byte("old"), 0o644)
	err := onnxio.WriteFileAtomic(p, func(w io.Writer) error {
		w.Write([]byte("partial"))
		return os.ErrInvalid
	})
	if err == nil {
		t.Fatal("WriteFileAtomic returned no error from a failing writer")
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("target changed to %q", b)
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Errorf("%d files left in the folder, want only the target", len(es))
	}
}

func TestFingerprint(t *testing.T) {
	m, _ := onnxio.Load(fixtures(t)[0])
	a, err := onnxio.Fingerprint(m.Graph)
	if err != nil {
		t.Fatal(err)
	}
	c := proto.Clone(m).(*onnxpb.ModelProto)
	c.Graph.Node = nil // the graph does not matter, the weights do
	if b, _ := onnxio.Fingerprint(c.Graph); b != a {
		t.Error("fingerprint depends on nodes")
	}
	v, _ := onnxio.Floats(c.Graph.Initializer[0])
	v[0] += 1
	onnxio.SetFloats(c.Graph.Initializer[0], v)
	if b, _ := onnxio.Fingerprint(c.Graph); b == a {
		t.Error("fingerprint did not change with a weight")
	}
}

func FuzzDecode(f *testing.F) {
	for _, p := range fixtures(f) {
		b, _ := os.ReadFile(p)
		f.Add(b[:min(len(b), 4096)])
	}
	f.Add([]byte{})
	f.Add([]byte("\x08\x07\x12\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := onnxio.Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes must survive the checks Load runs, without panicking.
		_ = onnxio.CheckInitializers(m.GetGraph())
		if _, err := onnxio.Encode(m); err != nil {
			t.Fatalf("decoded model does not encode: %v", err)
		}
	})
}
