package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/internal/npy"
)

// TestTuneEndToEnd runs the whole pipeline on a fixture and a carved Fashion-MNIST
// task (scored through the paper's random head, so that training starts from an
// untrained one): training must clearly beat the untrained head, and the merged and sidecar
// exports must predict what the trained model predicts, under ONNX Runtime.
func TestTuneEndToEnd(t *testing.T) {
	dir := t.TempDir()
	task := filepath.Join(dir, "task")
	if err := data.FewShot(data.FewShotOptions{From: fashionMNIST, Classes: []int{0, 1, 2, 3, 4}, Train: 160, Val: 40, Test: 100, Seed: 5, Out: task}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "run")
	code, stdout, stderr := sptctl(t, "tune", "--model", "../../testdata/tv_op17_alias.onnx", "--data", task, "--out", out,
		"--budget", "10%", "--head", "random", "--sens-batches", "2", "--epochs", "8", "--warmup", "1", "--batch-size", "32", "--lr", "5e-3", "--quantize", "int8", "--json")
	if code != 0 {
		t.Fatalf("tune: exit %d\n%s", code, stderr)
	}
	var r tuneReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("report: %v\n%s", err, stdout)
	}
	t.Logf("top-1 before %.3f, after %.3f, merged %.3f, sidecar %.3f; %d trainable", r.Before, r.After, r.Merged, r.Sidecar, r.Trainable)
	if r.After < r.Before+0.15 || r.After < 0.4 {
		t.Errorf("test top-1 %.3f after training vs %.3f before: not clearly better (chance 0.2)", r.After, r.Before)
	}
	// --quantize int8: the quantized export, checked on the val split, is within 5
	// points of the fp32 merged model on the test split and smaller.
	if q := r.Quantized; q == nil || q.Check.Split != "val40" || q.Check.Images != 40 || q.Top1 < r.Merged-0.05 || q.Bytes >= q.MergedBytes {
		t.Errorf("quantized export: %+v (fp32 merged top-1 %.3f)", q, r.Merged)
	}
	for _, f := range []string{"report.json", "report.md", "plan.json", "scores.safetensors", "sensitivity.png", "merged.onnx", "merged-int8.onnx", "trained.onnx", "sidecar/base.data", "sidecar/task.onnx", "sidecar/task.data"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("tune did not write %s", f)
		}
	}
	// The scoring stage's temporary file of Σ grad² sums (SpillDir) leaves nothing behind.
	if ents, err := os.ReadDir(out); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".sptctl-") {
				t.Errorf("tune left %s in its output folder", e.Name())
			}
		}
	}
	// The merged model keeps the base's structure, so it counts the base's parameters
	// (PyTorch's count, from the fixture's ground truth) with the new 5-class head.
	code, stdout, _ = sptctl(t, "inspect", "--json", filepath.Join(out, "merged.onnx"))
	var merged inspectReport
	if code != 0 || json.Unmarshal([]byte(stdout), &merged) != nil {
		t.Fatalf("inspect merged: exit %d", code)
	}
	var truth struct{ Params int64 }
	b, _ := os.ReadFile("../../testdata/tv_op17_alias.json")
	json.Unmarshal(b, &truth)
	if want := truth.Params - int64(10*(merged.Head.In+1)) + int64(5*(merged.Head.In+1)); merged.Params != want {
		t.Errorf("merged model has %d parameters, want %d", merged.Params, want)
	}
	// Same predictions from the trained, merged and sidecar models on test images.
	ds, _ := data.Open(task)
	test, _ := ds.Split("test")
	pre := data.DefaultPreprocess(1, 28, 28)
	n := 40
	x := make([]float32, n*28*28)
	for i := 0; i < n; i++ {
		img, err := test.Image(i)
		if err != nil {
			t.Fatal(err)
		}
		data.Tensor(img, pre, x[i*784:(i+1)*784])
	}
	in := filepath.Join(dir, "x.npy")
	npy.Write(in, &npy.Array{Shape: []int64{int64(n), 1, 28, 28}, Float32: x})
	predict := func(model string) []int {
		y := filepath.Join(dir, filepath.Base(model)+".y.npy")
		if code, _, stderr := sptctl(t, "run", "--model", model, "--input", in, "--output", y); code != 0 {
			t.Fatalf("run %s: %s", model, stderr)
		}
		a, err := npy.Read(y)
		if err != nil {
			t.Fatal(err)
		}
		c := int(a.Shape[1])
		var p []int
		for i := 0; i < n; i++ {
			row := a.Float32[i*c : (i+1)*c]
			p = append(p, slices.Index(row, slices.Max(row)))
		}
		return p
	}
	want := predict(filepath.Join(out, "trained.onnx"))
	for _, m := range []string{"merged.onnx", "sidecar/task.onnx"} {
		if got := predict(filepath.Join(out, m)); !slices.Equal(got, want) {
			t.Errorf("%s predicts %v, the trained model %v", m, got, want)
		}
	}
}
