package surgery_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// truth is the structure of a fixture as PyTorch knew it when it exported it
// (testdata/NAME.json, written by testdata/make_fixtures.py).
type truth struct {
	Blocks int `json:"blocks"`
	Dim    int `json:"dim"`
	Layers []struct {
		Block int    `json:"block"`
		Op    string `json:"op"`
		In    int    `json:"in"`
		Out   int    `json:"out"`
		Fused bool   `json:"fused"`
	} `json:"layers"`
	Head struct {
		In  int `json:"in"`
		Out int `json:"out"`
	} `json:"head"`
	Batch    *int64 `json:"batch"`
	Channels int64  `json:"channels"`
	Image    int64  `json:"image_size"`
}

func fixtures(t *testing.T) []string {
	t.Helper()
	fs, err := filepath.Glob("../testdata/*.onnx")
	if err != nil || len(fs) == 0 {
		t.Fatalf("no fixtures in ../testdata: %v", err)
	}
	return fs
}

func TestFindViTMatchesPyTorch(t *testing.T) {
	for _, f := range fixtures(t) {
		name := strings.TrimSuffix(filepath.Base(f), ".onnx")
		t.Run(name, func(t *testing.T) {
			var want truth
			b, err := os.ReadFile(strings.TrimSuffix(f, ".onnx") + ".json")
			if err != nil {
				t.Skip("no ground truth")
			}
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			m, err := onnxio.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			v, err := surgery.FindViT(surgery.New(m))
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Blocks) != want.Blocks {
				t.Fatalf("blocks = %d, want %d", len(v.Blocks), want.Blocks)
			}
			if v.Dim != want.Dim {
				t.Errorf("dim = %d, want %d", v.Dim, want.Dim)
			}
			ls := v.Linears()
			if len(ls) != len(want.Layers) {
				t.Fatalf("%d layers, want %d", len(ls), len(want.Layers))
			}
			for i, w := range want.Layers {
				l := ls[i]
				if l.Block != w.Block || string(l.Kind) != w.Op || l.In != w.In || l.Out != w.Out || l.Fused != w.Fused {
					t.Errorf("layer %d = block %d %s %dx%d fused=%v, want block %d %s %dx%d fused=%v",
						i, l.Block, l.Kind, l.In, l.Out, l.Fused, w.Block, w.Op, w.In, w.Out, w.Fused)
				}
				if l.Bias == "" {
					t.Errorf("%s: no bias found", l.Name)
				}
			}
			if v.Head.In != want.Head.In || v.Head.Out != want.Head.Out {
				t.Errorf("head %dx%d, want %dx%d", v.Head.In, v.Head.Out, want.Head.In, want.Head.Out)
			}
			if v.ClassToken == "" || v.PosEmbed == "" || v.PatchEmbed == "" {
				t.Errorf("embeddings: cls %q pos %q patch %q", v.ClassToken, v.PosEmbed, v.PatchEmbed)
			}
			if v.Channels != want.Channels || v.Height != want.Image {
				t.Errorf("input %dx%d, want %dx%d", v.Channels, v.Height, want.Channels, want.Image)
			}
			if (want.Batch == nil) != (v.Batch == 0) || (want.Batch != nil && *want.Batch != v.Batch) {
				t.Errorf("batch %d, want %v", v.Batch, want.Batch)
			}
			if got := len(v.Vectors()); got != want.Blocks*(4+6) {
				t.Errorf("%d vectors, want %d", got, want.Blocks*10)
			}
		})
	}
}
