package sensitivity

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/onnxio"
)

func TestScoresRoundTripAndFingerprint(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := onnxio.Fingerprint(m.Graph)
	w := m.Graph.Initializer[0]
	s := Scores{w.GetName(): make([]float32, onnxio.NumElements(w.Dims))}
	s[w.GetName()][1] = 2.5
	p := filepath.Join(t.TempDir(), "s.safetensors")
	if err := Write(p, m, s, Info{Fingerprint: fp, Classes: 5, HeadSeed: 7, Batches: 2, BatchSize: 4, Examples: 8}); err != nil {
		t.Fatal(err)
	}
	got, info, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if info.Classes != 5 || info.HeadSeed != 7 || info.Examples != 8 || got[w.GetName()][1] != 2.5 {
		t.Errorf("read back %+v", info)
	}
	if err := info.CheckModel("m.onnx", m); err != nil {
		t.Error(err)
	}
	other, _ := onnxio.Load("../testdata/timm_op14.onnx")
	if err := info.CheckModel("timm.onnx", other); err == nil || !strings.Contains(err.Error(), "another model") {
		t.Errorf("scores accepted for another model: %v", err)
	}
	if err := Write(p, m, Scores{"nope": {1}}, Info{}); err == nil {
		t.Error("scores for an unknown initializer were written")
	}
}
