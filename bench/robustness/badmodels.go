package main

import (
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// badModels are models broken in every way the issue lists, by name.
func (f *fixtures) badModels() []struct{ what, path string } {
	base, err := os.ReadFile(f.p("base.onnx"))
	if err != nil {
		log.Fatal(err)
	}
	var ms []struct{ what, path string }
	add := func(what, path string) { ms = append(ms, struct{ what, path string }{what, path}) }
	add("empty model file", f.write("bad/empty.onnx", nil))
	add("random bytes as a model", f.write("bad/random.onnx", pseudoRandom(4096)))
	add("model truncated to half", f.write("bad/truncated.onnx", base[:len(base)/2]))
	add("model truncated by one byte", f.write("bad/truncated1.onnx", base[:len(base)-1]))
	add("text file as a model", f.write("bad/text.onnx", []byte("hello, this is not a model\n")))
	os.MkdirAll(f.p("bad/folder.onnx"), 0o755)
	add("a folder as the model", f.p("bad/folder.onnx"))
	add("missing model file", f.p("bad/missing.onnx"))

	// External data: a symbolic link out of the model's folder, "..", an absolute path,
	// a short file, dims of 2^33 with no length.
	ext := func(dir, loc string, edit func(t *onnxpb.TensorProto)) string {
		m := f.model("base.onnx")
		var t *onnxpb.TensorProto
		for _, x := range m.Graph.Initializer {
			if t == nil || len(x.GetRawData()) > len(t.GetRawData()) {
				t = x
			}
		}
		data := t.RawData
		t.RawData = nil
		t.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
		t.ExternalData = []*onnxpb.StringStringEntryProto{{Key: proto.String("location"), Value: proto.String(loc)},
			{Key: proto.String("length"), Value: proto.String(strconv.Itoa(len(data)))}}
		if edit != nil {
			edit(t)
		}
		if !filepath.IsAbs(loc) && !strings.HasPrefix(loc, "..") {
			f.write(filepath.Join(dir, loc), data)
		}
		return f.saveRaw(filepath.Join(dir, "model.onnx"), m)
	}
	f.write("outside/secret.bin", pseudoRandom(1<<16))
	p := ext("bad/extlink", "weights.bin", nil)
	os.Remove(f.p("bad/extlink/weights.bin"))
	os.Symlink(f.p("outside/secret.bin"), f.p("bad/extlink/weights.bin"))
	add("external data: weights.bin a symlink to a file outside the model's folder", p)
	p = ext("bad/extdirlink", "sub/weights.bin", nil)
	os.RemoveAll(f.p("bad/extdirlink/sub"))
	os.Symlink(f.p("outside"), f.p("bad/extdirlink/sub"))
	f.copy(f.p("outside/secret.bin"), "outside/weights.bin")
	add("external data: a folder symlinked outside the model's folder", p)
	add("external data: location ../outside/secret.bin", ext("bad/extdotdot", "../../outside/secret.bin", nil))
	add("external data: absolute location /etc/passwd", ext("bad/extabs", "/etc/passwd", nil))
	add("external data: /proc/self/environ", ext("bad/extproc", "/proc/self/environ", nil))
	add("external data: file shorter than its length", ext("bad/extshort", "weights.bin", func(t *onnxpb.TensorProto) {
		t.ExternalData[1].Value = proto.String("100000000")
	}))
	add("external data: dims 2^33 and no length", ext("bad/ext2p33", "weights.bin", func(t *onnxpb.TensorProto) {
		t.Dims = []int64{1 << 33}
		t.ExternalData = t.ExternalData[:1]
	}))
	add("external data: dims 2^40 and no length", ext("bad/ext2p40", "weights.bin", func(t *onnxpb.TensorProto) {
		t.Dims = []int64{1 << 20, 1 << 20}
		t.ExternalData = t.ExternalData[:1]
	}))

	// Initializer dims.
	dims := func(name, what string, edit func(t *onnxpb.TensorProto)) {
		m := f.model("base.onnx")
		for _, t := range m.Graph.Initializer {
			if len(t.Dims) == 2 {
				edit(t)
				break
			}
		}
		add(what, f.saveRaw("bad/"+name+".onnx", m))
	}
	dims("overflow", "initializer dims whose product overflows int64 (2^62+96 × 4)", func(t *onnxpb.TensorProto) {
		t.Dims = []int64{1<<62 + 96, 4}
	})
	dims("overflow1", "initializer dim 2^62+96", func(t *onnxpb.TensorProto) { t.Dims = []int64{1<<62 + 96} })
	dims("negdim", "negative initializer dim", func(t *onnxpb.TensorProto) { t.Dims[0] = -t.Dims[0] })
	dims("rawshort", "raw data shorter than the dims", func(t *onnxpb.TensorProto) { t.RawData = t.RawData[:len(t.RawData)/2] })

	// Declared inputs.
	input := func(name, what string, shape ...int64) {
		m := f.model("base.onnx")
		var ds []*onnxpb.TensorShapeProto_Dimension
		for _, d := range shape {
			ds = append(ds, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}})
		}
		m.Graph.Input[0].Type.GetTensorType().Shape = &onnxpb.TensorShapeProto{Dim: ds}
		add(what, f.saveRaw("bad/"+name+".onnx", m))
	}
	input("input2p20", "graph input declared 1×3×2^20×2^20", 1, 3, 1<<20, 1<<20)
	input("input2p40c", "graph input declared with 2^40 channels", 1, 1<<40, 32, 32)

	// Graph structure.
	// withInputs are the nodes that read something (and so can be made to read back).
	withInputs := func(m *onnxpb.ModelProto) []*onnxpb.NodeProto {
		var ns []*onnxpb.NodeProto
		for _, n := range m.Graph.Node {
			if len(n.Input) > 0 && len(n.Output) > 0 {
				ns = append(ns, n)
			}
		}
		return ns
	}
	m := f.model("base.onnx")
	ns := withInputs(m)
	n := ns[len(ns)/2]
	n.Input[0] = n.Output[0]
	add("a node that reads its own output (self-loop)", f.saveRaw("bad/selfloop.onnx", m))
	m = f.model("base.onnx")
	ns = withInputs(m)
	a, b := ns[len(ns)/3], ns[2*len(ns)/3]
	a.Input[0] = b.Output[0]
	add("a cycle between two nodes", f.saveRaw("bad/cycle.onnx", m))
	m = f.model("base.onnx")
	for _, n := range m.Graph.Node {
		if n.GetOpType() == "Gelu" || n.GetOpType() == "Erf" || n.GetOpType() == "Softmax" {
			n.OpType = proto.String("NoSuchOp")
			break
		}
	}
	add("an unknown op (NoSuchOp) in a block", f.saveRaw("bad/unknownop.onnx", m))
	add("a valid ONNX model that is no ViT (y = x + x)", f.saveRaw("bad/notvit.onnx", &onnxpb.ModelProto{IrVersion: proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{Name: proto.String("g"),
			Node:   []*onnxpb.NodeProto{{OpType: proto.String("Add"), Input: []string{"x", "x"}, Output: []string{"y"}}},
			Input:  []*onnxpb.ValueInfoProto{{Name: proto.String("x")}},
			Output: []*onnxpb.ValueInfoProto{{Name: proto.String("y")}}}}))
	return ms
}
