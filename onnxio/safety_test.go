package onnxio_test

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// extModel writes, in dir, a model m.onnx whose one initializer "w" (FLOAT, dims) is
// stored at location in external data; length < 0 leaves the length out.
func extModel(t *testing.T, dir, location string, dims []int64, length int64) string {
	t.Helper()
	ext := []*onnxpb.StringStringEntryProto{{Key: proto.String("location"), Value: proto.String(location)}}
	if length >= 0 {
		ext = append(ext, &onnxpb.StringStringEntryProto{Key: proto.String("length"), Value: proto.String(strconv.FormatInt(length, 10))})
	}
	m := &onnxpb.ModelProto{IrVersion: proto.Int64(8), Graph: &onnxpb.GraphProto{
		Name: proto.String("g"),
		Initializer: []*onnxpb.TensorProto{{Name: proto.String("w"), DataType: proto.Int32(onnxio.Float), Dims: dims,
			DataLocation: onnxpb.TensorProto_EXTERNAL.Enum(), ExternalData: ext}},
	}}
	b, err := onnxio.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "m.onnx")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, path string, n int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, make([]byte, n), 0o644); err != nil {
		t.Fatal(err)
	}
}

// External data is read only from regular files inside the model's folder once every
// symbolic link is followed.
func TestExternalDataSymlinks(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(root, "secret.bin")
	writeFile(t, outside, 16)
	outsideDir := filepath.Join(root, "elsewhere")
	writeFile(t, filepath.Join(outsideDir, "w.bin"), 16)

	cases := []struct {
		name, location string
		setup          func(model string)
		wantErr        string // "" means it must load
	}{
		{"link inside the folder", "link.bin", func(model string) {
			writeFile(t, filepath.Join(model, "real.bin"), 16)
			os.Symlink("real.bin", filepath.Join(model, "link.bin"))
		}, ""},
		{"link to a file outside", "weights.bin", func(model string) {
			os.Symlink(outside, filepath.Join(model, "weights.bin"))
		}, "outside the model's folder"},
		{"relative link climbing out", "weights.bin", func(model string) {
			os.Symlink("../secret.bin", filepath.Join(model, "weights.bin"))
		}, "outside the model's folder"},
		{"linked folder component", "sub/w.bin", func(model string) {
			os.Symlink(outsideDir, filepath.Join(model, "sub"))
		}, "outside the model's folder"},
		{"link to a device", "zero.bin", func(model string) {
			os.Symlink("/dev/zero", filepath.Join(model, "zero.bin"))
		}, "outside the model's folder"},
		{"dangling link", "gone.bin", func(model string) {
			os.Symlink(filepath.Join(root, "nothing"), filepath.Join(model, "gone.bin"))
		}, "no such file"},
	}
	for i, c := range cases {
		model := filepath.Join(root, "model"+strconv.Itoa(i))
		os.Mkdir(model, 0o755)
		c.setup(model)
		p := extModel(t, model, c.location, []int64{4}, -1)
		m, err := onnxio.Load(p)
		if c.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			} else if len(m.Graph.Initializer[0].RawData) != 16 {
				t.Errorf("%s: %d bytes read", c.name, len(m.Graph.Initializer[0].RawData))
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: loaded", c.name)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.wantErr) || !strings.Contains(msg, `"w"`) || !strings.Contains(msg, c.location) || strings.Contains(msg, "\n") {
			t.Errorf("%s: error %q should be one line naming tensor \"w\", file %s and say %q", c.name, msg, c.location, c.wantErr)
		}
	}
}

// The model's own folder may be reached through a link: files inside it are inside.
func TestExternalDataThroughLinkedModelFolder(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "real")
	os.Mkdir(real, 0o755)
	writeFile(t, filepath.Join(real, "w.bin"), 16)
	extModel(t, real, "w.bin", []int64{4}, -1)
	link := filepath.Join(root, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := onnxio.Load(filepath.Join(link, "m.onnx")); err != nil {
		t.Fatal(err)
	}
}

// A FIFO inside the folder would block a read forever: only regular files are read.
func TestExternalDataNotRegular(t *testing.T) {
	dir := t.TempDir()
	if err := mkfifo(filepath.Join(dir, "fifo.bin")); err != nil {
		t.Skip("no mkfifo:", err)
	}
	_, err := onnxio.Load(extModel(t, dir, "fifo.bin", []int64{4}, -1))
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("got %v", err)
	}
}

// Huge declared sizes are refused by arithmetic, before any allocation: the tests would
// run out of memory (or take minutes) otherwise.
func TestExternalDataHugeDims(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "w.bin"), 64)
	for _, c := range []struct {
		dims   []int64
		length int64
		want   string
	}{
		{[]int64{1 << 33}, -1, "too short"},
		{[]int64{1 << 20, 1 << 20}, -1, "too short"},
		{[]int64{1 << 40}, 1 << 42, "too short"},
		{[]int64{1<<62 + 96}, -1, "int64"},
		{[]int64{1 << 31, 1 << 31, 4}, -1, "int64"},
		{[]int64{1 << 61}, -1, "int64"}, // elements fit, bytes (×4) do not
	} {
		_, err := onnxio.Load(extModel(t, dir, "w.bin", c.dims, c.length))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `"w"`) {
			t.Errorf("dims %v length %d: error %v, want one saying %q", c.dims, c.length, err, c.want)
		}
	}
}

// Dims whose product wraps around int64 are refused for inline data too.
func TestRawDataDimsOverflow(t *testing.T) {
	cases := [][]int64{
		{1<<62 + 96},           // × 4 bytes wraps to 384
		{1 << 32, 1 << 32, 16}, // the element count itself wraps to 0
		{-1, -1},
	}
	for _, dims := range cases {
		raw := make([]byte, 384)
		tp := &onnxpb.TensorProto{Name: proto.String("w"), DataType: proto.Int32(onnxio.Float), Dims: dims, RawData: raw}
		if err := onnxio.CheckTensor(tp); err == nil {
			t.Errorf("dims %v with %d bytes accepted", dims, len(raw))
		}
		tp = &onnxpb.TensorProto{Name: proto.String("w"), DataType: proto.Int32(onnxio.Float), Dims: dims}
		if err := onnxio.CheckTensor(tp); err == nil {
			t.Errorf("dims %v with no data accepted", dims)
		}
	}
	if n := onnxio.NumElements([]int64{1 << 62, 4}); n != -1 {
		t.Errorf("NumElements overflow = %d, want -1", n)
	}
	if n := onnxio.NumElements([]int64{1 << 62, 4, 0}); n != 0 {
		t.Errorf("NumElements with a zero dim = %d, want 0", n)
	}
	if _, err := onnxio.ByteSize([]int64{math.MaxInt64 / 2}, onnxio.Float); err == nil {
		t.Error("ByteSize accepted a size past int64")
	}
	if n, err := onnxio.ByteSize([]int64{3, 5}, onnxio.Int64); err != nil || n != 120 {
		t.Errorf("ByteSize([3 5], INT64) = %d, %v", n, err)
	}
}

func mkfifo(path string) error { return syscall.Mkfifo(path, 0o644) }

// Tensors in node attributes (a Constant's value) are checked like initializers: dims
// that overflow, or that disagree with the data, are refused when the model is loaded.
func TestNodeTensorDimsChecked(t *testing.T) {
	dir := t.TempDir()
	for i, c := range []struct {
		dims []int64
		raw  []byte
		ok   bool
	}{
		{[]int64{2}, make([]byte, 8), true},
		{[]int64{1 << 40}, make([]byte, 8), false},
		{[]int64{1<<62 + 96}, make([]byte, 384), false},
	} {
		val := &onnxpb.TensorProto{DataType: proto.Int32(onnxio.Float), Dims: c.dims, RawData: c.raw}
		m := &onnxpb.ModelProto{IrVersion: proto.Int64(8), Graph: &onnxpb.GraphProto{Name: proto.String("g"),
			Node: []*onnxpb.NodeProto{{Name: proto.String("c"), OpType: proto.String("Constant"), Output: []string{"y"},
				Attribute: []*onnxpb.AttributeProto{{Name: proto.String("value"), Type: onnxpb.AttributeProto_TENSOR.Enum(), T: val}}}}}}
		p := filepath.Join(dir, strconv.Itoa(i)+".onnx")
		b, _ := onnxio.Encode(m)
		os.WriteFile(p, b, 0o644)
		_, err := onnxio.Load(p)
		if c.ok != (err == nil) {
			t.Errorf("dims %v: %v", c.dims, err)
		}
		if err != nil && !strings.Contains(err.Error(), `node "c" attribute "value"`) {
			t.Errorf("dims %v: error %v does not name the node", c.dims, err)
		}
	}
}
