package export_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio"
)

// metadata is a model file's metadata_props, read without its external data.
func metadata(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := onnxio.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	md := map[string]string{}
	for _, p := range m.GetMetadataProps() {
		md[p.GetKey()] = p.GetValue()
	}
	return md
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A sidecar model is refused when the base.data beside it is another base model's
// (same names and shapes, other weights), whether or not base.json came with it.
func TestCheckSidecar(t *testing.T) {
	path := "../testdata/tv_op14_static.onnx"
	base := fixture.Load(t, path)
	other := fixture.Load(t, path)
	v, _ := onnxio.Floats(other.M.Graph.Initializer[0])
	v[0] += 1
	onnxio.SetFloats(other.M.Graph.Initializer[0], v)

	tmp := t.TempDir()
	export1 := func(b fixture.Model, dir string) string {
		tm := trained(t, b.M, plans(t, b)["lora"], false, 1)
		if _, err := export.Sidecar(tm, b.M, dir, "task"); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, "task.onnx")
	}
	model := export1(base, filepath.Join(tmp, "a"))
	foreign := export1(other, filepath.Join(tmp, "b"))
	md := metadata(t, model)
	if err := export.CheckSidecar(model, md); err != nil {
		t.Fatalf("own base: %v", err)
	}
	dirA, dirB := filepath.Dir(model), filepath.Dir(foreign)
	// base.data swapped, base.json left: the bytes do not match what base.json says.
	copyFile(t, filepath.Join(dirB, export.BaseData), filepath.Join(dirA, export.BaseData))
	err := export.CheckSidecar(model, md)
	if err == nil || !strings.Contains(err.Error(), "does not hold the weights") || !strings.Contains(err.Error(), export.BaseData) {
		t.Errorf("base.data of another base: %v", err)
	}
	// Both swapped: base.json names another base.
	copyFile(t, filepath.Join(dirB, export.BaseJSON), filepath.Join(dirA, export.BaseJSON))
	err = export.CheckSidecar(model, md)
	if err == nil || !strings.Contains(err.Error(), "another base model") || strings.Contains(err.Error(), "\n") {
		t.Errorf("base.json of another base: %v", err)
	}
	// A model outside a sidecar folder, or one recording no base, passes.
	if err := export.CheckSidecar(path, metadata(t, path)); err != nil {
		t.Errorf("plain base model: %v", err)
	}
}
