package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// TestVitB16RoundTrip loads torchvision's vit_b_16 as exported by PyTorch (346 MB),
// checks that encoding and saving it unchanged gives the file's exact bytes, and that
// FindViT sees ViT-B/16's structure. It skips unless SPTCTL_VIT_B16 names the file:
//
//	/usr/bin/python3 bench/make_vit_b16.py            # bench/cache/vit_b_16.onnx
//	SPTCTL_VIT_B16=$PWD/bench/cache/vit_b_16.onnx go test ./bench -run VitB16 -v
func TestVitB16RoundTrip(t *testing.T) {
	path := os.Getenv("SPTCTL_VIT_B16")
	if path == "" {
		t.Skip("SPTCTL_VIT_B16 not set (make the file with bench/make_vit_b16.py)")
	}
	in, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := onnxio.Load(path)
	if err != nil {
		t.Fatal(err)
	}

	b, err := onnxio.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, in) {
		t.Errorf("Encode: %d bytes, differs from the file's %d bytes (first difference at byte %d)", len(b), len(in), firstDiff(b, in))
	}
	b = nil
	out := filepath.Join(t.TempDir(), "vit_b_16.onnx")
	if err := onnxio.Save(out, m); err != nil {
		t.Fatal(err)
	}
	saved, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(saved, in) {
		t.Errorf("Save: %d bytes, differs from the file's %d bytes (first difference at byte %d)", len(saved), len(in), firstDiff(saved, in))
	}
	saved, in = nil, nil

	v, err := surgery.FindViT(surgery.New(m))
	if err != nil {
		t.Fatal(err)
	}
	const blocks, dim, mlp, classes = 12, 768, 3072, 1000
	if len(v.Blocks) != blocks {
		t.Fatalf("%d blocks, want %d", len(v.Blocks), blocks)
	}
	if v.Dim != dim {
		t.Errorf("dim %d, want %d", v.Dim, dim)
	}
	want := map[surgery.Kind][2]int{
		surgery.Q: {dim, dim}, surgery.K: {dim, dim}, surgery.V: {dim, dim},
		surgery.Proj: {dim, dim}, surgery.FC1: {dim, mlp}, surgery.FC2: {mlp, dim},
	}
	ls := v.Linears()
	if len(ls) != blocks*6 {
		t.Fatalf("%d block linears, want %d", len(ls), blocks*6)
	}
	for i, l := range ls {
		w := want[l.Kind]
		if l.Block != i/6 || l.Kind != surgery.BlockKinds()[i%6] || l.In != w[0] || l.Out != w[1] {
			t.Errorf("linear %d: block %d %s %dx%d, want block %d %s %dx%d", i, l.Block, l.Kind, l.In, l.Out, i/6, surgery.BlockKinds()[i%6], w[0], w[1])
		}
		if fused := l.Kind == surgery.Q || l.Kind == surgery.K || l.Kind == surgery.V; l.Fused != fused {
			t.Errorf("%s: fused %v, want %v (torchvision's in_proj)", l.Name, l.Fused, fused)
		}
		if l.Bias == "" {
			t.Errorf("%s: no bias found", l.Name)
		}
	}
	if v.Head == nil || v.Head.In != dim || v.Head.Out != classes {
		t.Errorf("head %+v, want %dx%d", v.Head, dim, classes)
	}
	if v.Channels != 3 || v.Height != 224 || v.Width != 224 {
		t.Errorf("input %dx%dx%d, want 3x224x224", v.Channels, v.Height, v.Width)
	}
	if v.ClassToken == "" || v.PosEmbed == "" || v.PatchEmbed == "" {
		t.Errorf("embeddings: cls %q pos %q patch %q", v.ClassToken, v.PosEmbed, v.PatchEmbed)
	}
	if got := len(v.Vectors()); got != blocks*10 {
		t.Errorf("%d vectors, want %d", got, blocks*10)
	}
	params := 0
	for _, l := range ls {
		params += l.Params()
	}
	t.Logf("%d nodes, %d initializers, batch %d, %d block linears with %d parameters, head %dx%d",
		len(m.GetGraph().GetNode()), len(m.GetGraph().GetInitializer()), v.Batch, len(ls), params, v.Head.In, v.Head.Out)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
