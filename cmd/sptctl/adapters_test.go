package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/export/adapter"
	"github.com/sptctl/sptctl/export/adapter/adaptertest"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
)

const adapterFixture = "../../testdata/tv_op17_dynamic.onnx"

// adapterApp runs sptctl in-process.
func adapterApp(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(append([]string{"sptctl"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestExportAdaptersAndRun(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base, err := onnxio.Load(adapterFixture)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	tasks := adaptertest.MakeAll(t, base)
	for _, task := range tasks {
		p := filepath.Join(dir, task.Name+".onnx")
		if err := onnxio.Save(p, task.Model); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out := filepath.Join(dir, "served")
	code, stdout, stderr := adapterApp("export", "--adapters", out, "--base", adapterFixture, "--json",
		"--model", paths[0], "--task", "cars", "--add-task", "pets="+paths[1], "--add-task", "flowers="+paths[2])
	if code != 0 {
		t.Fatalf("export: %d\n%s", code, stderr)
	}
	t.Log(stderr)
	var man adapterManifest
	if err := json.Unmarshal([]byte(stdout), &man); err != nil {
		t.Fatal(err)
	}
	if len(man.Tasks) != 3 || man.Tasks[0].Name != "cars" || man.Tasks[1].Classes != 12 || man.Classes != 12 {
		t.Fatalf("manifest: %+v", man)
	}
	for _, f := range []string{ReadyFile, ManifestFile, "cars.onnx_adapter", "pets.onnx_adapter", "flowers.onnx_adapter"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	ready := filepath.Join(out, ReadyFile)

	// run --adapter gives the task model's logits, of the task's size.
	x := filepath.Join(dir, "x.npy")
	in, err := npy.Read(strings.TrimSuffix(adapterFixture, ".onnx") + ".input.npy")
	if err != nil {
		t.Fatal(err)
	}
	if err := npy.Write(x, in); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"cars", "pets", "flowers"} {
		y := filepath.Join(dir, name+".npy")
		code, _, stderr := adapterApp("run", "--model", ready, "--adapter", filepath.Join(out, name+".onnx_adapter"), "--input", x, "--output", y)
		if code != 0 {
			t.Fatalf("run %s: %s", name, stderr)
		}
		got, err := npy.Read(y)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ort.RunFile(paths[i], map[string]ort.Tensor{"input": {Shape: in.Shape, Data: in.Float32}})
		if err != nil {
			t.Fatal(err)
		}
		w := want["logits"]
		if !slices.Equal(got.Shape, w.Shape) {
			t.Fatalf("%s: shape %v, want %v", name, got.Shape, w.Shape)
		}
		if d := adaptertest.RelDiff(got.Float32, w.Data); d > 1e-5 {
			t.Errorf("%s: relative difference %.3g", name, d)
		}
	}

	// Malformed and mismatched adapters: sptctl's own error, before ONNX Runtime.
	good, err := os.ReadFile(filepath.Join(out, "cars.onnx_adapter"))
	if err != nil {
		t.Fatal(err)
	}
	tensors, err := adapter.Read(filepath.Join(out, "cars.onnx_adapter"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	edit := func(name string, f func(map[string]adapter.Tensor)) string {
		ts := map[string]adapter.Tensor{}
		for k, v := range tensors {
			ts[k] = v
		}
		f(ts)
		p := filepath.Join(dir, name)
		if err := adapter.Write(p, ts); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wrongID := slices.Clone(good)
	copy(wrongID[4:8], "XXXX")
	var aName string
	for k := range tensors {
		if strings.HasSuffix(k, "/lora_A") {
			aName = k
			break
		}
	}
	cases := []struct {
		name, path string
		want       []string
	}{
		{"truncated", write("trunc.onnx_adapter", good[:len(good)/3]), []string{"malformed adapter"}},
		{"wrong identifier", write("id.onnx_adapter", wrongID), []string{`file identifier "XXXX", want "TORT"`}},
		{"not an adapter", adapterFixture, []string{"not an ONNX Runtime adapter"}},
		{"wrong shape", edit("shape.onnx_adapter", func(ts map[string]adapter.Tensor) {
			v := ts[aName]
			v.Dims = []int64{v.Dims[0] - 1, v.Dims[1]}
			v.Raw = v.Raw[:len(v.Raw)-int(v.Dims[1])*4]
			ts[aName] = v
		}), []string{aName, "has shape"}},
		{"unknown name", edit("name.onnx_adapter", func(ts map[string]adapter.Tensor) {
			ts[aName+"x"] = ts[aName]
			delete(ts, aName)
		}), []string{aName + "x", "is not an input of the model", "nearest adapter input", "missing"}},
		{"wrong dtype", edit("dtype.onnx_adapter", func(ts map[string]adapter.Tensor) {
			v := ts[aName]
			v.DataType = 11 // DOUBLE
			v.Raw = append(v.Raw, v.Raw...)
			ts[aName] = v
		}), []string{aName, "is DOUBLE, the model's input is FLOAT"}},
		{"required input", edit("input.onnx_adapter", func(ts map[string]adapter.Tensor) {
			ts["input"] = adapter.FloatTensor([]int64{1}, []float32{0})
		}), []string{`"input" is a required model input`}},
	}
	for _, tc := range cases {
		code, _, stderr := adapterApp("run", "--model", ready, "--adapter", tc.path, "--input", x, "--output", filepath.Join(dir, "bad.npy"))
		if code == 0 {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: error %q does not say %q", tc.name, strings.TrimSpace(stderr), w)
			}
		}
		t.Logf("%-16s %s", tc.name, strings.TrimSpace(stderr))
		// What ONNX Runtime itself says about the same file, for comparison.
		if a, err := ort.LoadLoraAdapter(tc.path); err != nil {
			t.Logf("%-16s   ONNX Runtime's loader: %v", "", err)
		} else {
			s, _ := ort.Open(ready)
			_, err := s.RunWithAdapters(map[string]ort.Tensor{"input": {Shape: in.Shape, Data: in.Float32}}, a)
			t.Logf("%-16s   ONNX Runtime's run: %v", "", err)
			s.Close()
			a.Close()
		}
	}

	// Usage errors.
	if code, _, _ := adapterApp("export", "--adapters", out, "--add-task", "nopath"); code != 2 {
		t.Errorf("--add-task without =: exit %d, want 2", code)
	}
	if code, _, _ := adapterApp("export", "--adapters", out, "--model", paths[0], "--task", "a", "--add-task", "a="+paths[1]); code != 2 {
		t.Errorf("a task name twice: exit %d, want 2", code)
	}
}
