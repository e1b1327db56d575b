package main

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
)

const fashionMNIST = fixture.FashionMNIST

// fewShot carves a small Fashion-MNIST task (classes, 10 training images, test test
// images) into dir/fewshot-CLASSES and returns its folder.
func fewShot(t *testing.T, dir, classes string, test int) string {
	t.Helper()
	cs, err := data.ParseClasses(classes)
	if err != nil {
		t.Fatal(err)
	}
	return fixture.FewShot(t, data.FewShotOptions{Classes: cs, Train: 10, Test: test, Seed: 1, Out: filepath.Join(dir, "fewshot-"+classes)})
}

// expectedCorrect runs every test image alone (zero-padded to a fixed batch) and
// counts the right answers: what eval must find in batches.
func expectedCorrect(t *testing.T, model, dir string, p meta.Preprocess, batch int64) (int, int) {
	t.Helper()
	ds, err := data.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	split, err := ds.Split("test")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.Open(model)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	size := data.TensorSize(p)
	correct := 0
	for i := 0; i < split.Len(); i++ {
		img, err := split.Image(i)
		if err != nil {
			t.Fatal(err)
		}
		x := make([]float32, int(batch)*size)
		data.Tensor(img, p, x[:size])
		y, err := s.Run(map[string]ort.Tensor{"input": {Shape: []int64{batch, int64(p.Channels), int64(p.Height), int64(p.Width)}, Data: x}})
		if err != nil {
			t.Fatal(err)
		}
		l := y["logits"]
		row := l.Data[:l.Shape[1]]
		if slices.Index(row, slices.Max(row)) == split.Label(i) {
			correct++
		}
	}
	return correct, split.Len()
}

func TestEval(t *testing.T) {
	dir := t.TempDir()
	ds := fewShot(t, dir, "0-4", 37)
	cases := []struct {
		model string
		batch int64 // the model's fixed batch (0: dynamic)
		args  []string
	}{
		{"../../testdata/tv_op14_static.onnx", 2, []string{"--batch-size", "8"}}, // 37 = 18·2 + 1: the last batch is padded
		{"../../testdata/tv_op17_alias.onnx", 0, []string{"--batch-size", "5"}},  // 37 = 7·5 + 2
		{"../../testdata/tv_op17_alias.onnx", 0, nil},                            // one batch of 37
	}
	for _, c := range cases {
		args := append([]string{"eval", "--model", c.model, "--data", ds, "--json"}, c.args...)
		code, stdout, stderr := sptctl(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		var r evalResult
		if err := json.Unmarshal([]byte(stdout), &r); err != nil {
			t.Fatalf("bad JSON %v: %s", err, stdout)
		}
		b := c.batch
		if b == 0 {
			b = 1
		}
		want, n := expectedCorrect(t, c.model, ds, data.DefaultPreprocess(1, 28, 28), b)
		if r.N != 37 || n != 37 || r.Correct != want || r.Split != "test" || r.Model != c.model || r.Top1 != float64(want)/37 {
			t.Errorf("%v: %+v, want %d/%d correct", c.args, r, want, n)
		}
		if !strings.Contains(stderr, "preprocessing: default for a 1-channel 28x28 input") {
			t.Errorf("stderr: %s", stderr)
		}
		if c.batch == 2 && !strings.Contains(stderr, "fixed batch size of 2") {
			t.Errorf("no note on the fixed batch: %s", stderr)
		}
	}
	// Text output; preprocessing recorded in the model.
	m, _ := onnxio.Load("../../testdata/tv_op17_alias.onnx")
	meta.Set(m, meta.KeyPreprocess, meta.Preprocess{Channels: 1, Height: 28, Width: 28, Mean: []float32{0.2}, Std: []float32{0.3}})
	withMeta := filepath.Join(dir, "meta.onnx")
	onnxio.Save(withMeta, m)
	code, stdout, stderr := sptctl(t, "eval", "--model", withMeta, "--data", ds)
	want, _ := expectedCorrect(t, withMeta, ds, meta.Preprocess{Channels: 1, Height: 28, Width: 28, Mean: []float32{0.2}, Std: []float32{0.3}}, 1)
	if code != 0 || !strings.HasPrefix(stdout, "top-1 ") || !strings.Contains(stdout, "/37) on test") || !strings.Contains(stderr, "from the model (sptctl.preprocess") {
		t.Errorf("exit %d, %q, %q", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "("+itoa(want)+"/37)") {
		t.Errorf("text output %q, want %d correct", stdout, want)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestEvalRefuses(t *testing.T) {
	dir := t.TempDir()
	ten := fewShot(t, dir, "0-9", 4)
	five := exTrained(t, "../../testdata/tv_op17_alias.onnx", inject.LoRA, 5, 1, filepath.Join(dir, "five.onnx"), false)
	static5 := exTrained(t, "../../testdata/tv_op14_static.onnx", inject.LoRA, 5, 1, filepath.Join(dir, "static5.onnx"), false)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"eval", "--model", five, "--data", ten}, 1, "has 10 classes, but " + five + "'s head has 5 outputs"},
		{[]string{"eval", "--model", static5, "--data", ten}, 1, "has 10 classes, but " + static5 + "'s head has 5 outputs"},
		{[]string{"eval", "--model", five, "--data", ten, "--split", "val"}, 1, "no split \"val\""},
		{[]string{"eval", "--model", five, "--data", filepath.Join(dir, "none")}, 1, "none"},
		{[]string{"eval", "--model", filepath.Join(dir, "none.onnx"), "--data", ten}, 1, "none.onnx"},
		{[]string{"eval", "--model", five, "--data", ten, "--batch-size", "0"}, 2, "--batch-size"},
	}
	for _, c := range cases {
		code, _, stderr := sptctl(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args[1:], code, stderr, c.code, c.want)
		}
	}
}

// writeNpy writes an array with any dtype header (for arrays npy.Write cannot make).
func writeNpy(t *testing.T, path, descr string, shape string, data []byte) {
	t.Helper()
	h := "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }"
	for (10+len(h)+1)%64 != 0 {
		h += " "
	}
	h += "\n"
	b := append([]byte("\x93NUMPY\x01\x00"), 0, 0)
	binary.LittleEndian.PutUint16(b[8:], uint16(len(h)))
	b = append(append(b, h...), data...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"tv_op14_static", "tv_op17_dynamic"} {
		model := "../../testdata/" + name + ".onnx"
		out := filepath.Join(dir, name+".out.npy")
		code, _, stderr := sptctl(t, "run", "--model", model, "--input", "../../testdata/"+name+".input.npy", "--output", out)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		got, err := npy.Read(out)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := npy.Read("../../testdata/" + name + ".output.npy")
		if !slices.Equal(got.Shape, want.Shape) || fixture.RelDiff(got.Float32, want.Float32) > 1e-5 {
			t.Errorf("%s: output %v differs from PyTorch's %v (%.3g)", name, got.Shape, want.Shape, fixture.RelDiff(got.Float32, want.Float32))
		}
		if !strings.Contains(stderr, "wrote "+out+": logits [") {
			t.Errorf("stderr %q", stderr)
		}
	}

	// Bad inputs: clear errors naming the input, nothing written.
	static := "../../testdata/tv_op14_static.onnx"
	x, _ := npy.Read("../../testdata/tv_op14_static.input.npy")
	three := filepath.Join(dir, "three.npy")
	npy.Write(three, &npy.Array{Shape: []int64{3, 1, 28, 28}, Float32: make([]float32, 3*28*28)})
	rank3 := filepath.Join(dir, "rank3.npy")
	npy.Write(rank3, &npy.Array{Shape: []int64{2, 28, 28}, Float32: make([]float32, 2*28*28)})
	ints := filepath.Join(dir, "ints.npy")
	npy.Write(ints, &npy.Array{Shape: x.Shape, Int64: make([]int64, len(x.Float32))})
	f64 := filepath.Join(dir, "f64.npy")
	writeNpy(t, f64, "<f8", "(2, 1, 28, 28)", make([]byte, 8*len(x.Float32)))
	notNpy := filepath.Join(dir, "not.npy")
	os.WriteFile(notNpy, []byte("hello"), 0o644)
	out := filepath.Join(dir, "y.npy")
	cases := []struct {
		in, want string
	}{
		{three, "three.npy has shape [3 1 28 28], but input \"input\" (float32 [2 1 28 28]) of " + static + " does not take it"},
		{rank3, "rank3.npy has shape [2 28 28], but input \"input\""},
		{ints, "ints.npy holds int64, but input \"input\" (float32 [2 1 28 28]) of " + static + " wants float32"},
		{f64, "f64.npy cannot feed input \"input\" (float32 [2 1 28 28])"},
		{notNpy, "not.npy cannot feed input"},
		{filepath.Join(dir, "missing.npy"), "missing.npy"},
	}
	for _, c := range cases {
		code, _, stderr := sptctl(t, "run", "--model", static, "--input", c.in, "--output", out)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want %q", filepath.Base(c.in), code, stderr, c.want)
		}
		if c.in == f64 && !strings.Contains(stderr, `"<f8"`) {
			t.Errorf("float64 input: %q does not name the dtype", stderr)
		}
		if exists(out) {
			t.Fatalf("%s: wrote %s", filepath.Base(c.in), out)
		}
	}
}
