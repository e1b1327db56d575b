package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/ortcheck"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
)

// int8Tolerance bounds the quantized logits' difference from the fp32 merged model's
// (max|q−f| / max|f|) on the test's inputs.
const int8Tolerance = 0.05

// quantTask is a trained fixture (fixed batch 2, recorded 28×28 grayscale
// preprocessing) and a few-shot folder with a val split.
func quantTask(t *testing.T, dir string) (trained, ds string) {
	t.Helper()
	ds = fixture.FewShot(t, data.FewShotOptions{Classes: []int{0, 1, 2, 3, 4}, Train: 5, Val: 40, Test: 5, Seed: 2, Out: filepath.Join(dir, "fewshot")})
	trained = exTrained(t, "../../testdata/tv_op14_static.onnx", inject.LoRA, 5, 1, filepath.Join(dir, "trained.onnx"), false)
	m, err := onnxio.Load(trained)
	if err != nil {
		t.Fatal(err)
	}
	meta.Set(m, meta.KeyPreprocess, meta.Preprocess{Channels: 1, Height: 28, Width: 28, Mean: []float32{0.3}, Std: []float32{0.4}})
	fixture.Save(t, m, trained)
	return trained, ds
}

func TestExportQuantize(t *testing.T) {
	ortcheck.Init(t)
	dir := t.TempDir()
	trained, ds := quantTask(t, dir)
	fp32 := filepath.Join(dir, "merged.onnx")
	if code, _, stderr := sptctl(t, "export", "--model", trained, "--merge", "--out", fp32); code != 0 {
		t.Fatalf("fp32 export: exit %d: %s", code, stderr)
	}
	relabel(t, fp32, ds, "val40")
	x := ortcheck.Input(t, "../../testdata/tv_op14_static.onnx", 0)
	want := exRun(t, fp32, x)

	// int8 checked on the val split: its numbers are eval's on the two files.
	q8 := filepath.Join(dir, "int8.onnx")
	code, stdout, stderr := sptctl(t, "export", "--model", trained, "--merge", "--quantize", "int8", "--out", q8, "--data", ds, "--json")
	if code != 0 {
		t.Fatalf("int8 export: exit %d: %s", code, stderr)
	}
	var res exportResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Quant == nil {
		t.Fatalf("bad JSON (%v): %s", err, stdout)
	}
	k := res.Quant.Check
	if k.Split != "val40" || k.Images != 40 || !parityHolds(res.Parity, 4) {
		t.Errorf("check %+v, parity %+v", k, res.Parity)
	}
	if top1 := evalTop1(t, q8, ds, "val"); top1 != k.Top1 {
		t.Errorf("check says int8 top-1 %v, eval %v", k.Top1, top1)
	}
	if top1 := evalTop1(t, fp32, ds, "val"); top1 != k.Top1FP32 {
		t.Errorf("check says fp32 top-1 %v, eval %v", k.Top1FP32, top1)
	}
	if !strings.Contains(stderr, "quantization check on 40 images of split val40") {
		t.Errorf("stderr: %s", stderr)
	}
	if rel := fixture.RelDiff(exRun(t, q8, x), want); !(rel <= int8Tolerance) {
		t.Errorf("int8 logits differ from fp32 merged by %.3g (relative) > %g", rel, int8Tolerance)
	}
	// inspect shows the record
	code, stdout, _ = sptctl(t, "inspect", q8)
	if code != 0 || !strings.Contains(stdout, "quantized   int8 (8 bits)") || !strings.Contains(stdout, "blocks.0.qkv") || !strings.Contains(stdout, "head") {
		t.Errorf("inspect: exit %d\n%s", code, stdout)
	}
	var insp inspectReport
	_, stdout, _ = sptctl(t, "inspect", "--json", q8)
	if err := json.Unmarshal([]byte(stdout), &insp); err != nil || insp.Quantization == nil || insp.Quantization.Bits != 8 || len(insp.Quantization.Layers) != 9 {
		t.Errorf("inspect --json (%v): %s", err, stdout)
	}

	// int4 without data: the logits on the parity inputs.
	q4 := filepath.Join(dir, "int4.onnx")
	code, stdout, stderr = sptctl(t, "export", "--model", trained, "--merge", "--quantize", "int4", "--block-size", "16", "--out", q4)
	if code != 0 || !strings.Contains(stderr, "quantization check on 4 inputs (no --data)") || !strings.Contains(stdout, "int4") {
		t.Fatalf("int4 export: exit %d: %s\n%s", code, stderr, stdout)
	}
	if md, _ := onnxio.PeekMetadata(q4); !strings.Contains(md[meta.KeyQuantization], `"block_size":16`) {
		t.Errorf("int4 metadata: %q", md[meta.KeyQuantization])
	}

	// --max-drop below the measured drop refuses and writes nothing. The val split was
	// relabelled with the fp32 merged model's own predictions (top-1 100%), so every
	// image the int4 model decides otherwise is a lost point.
	code, stdout, stderr = sptctl(t, "export", "--model", trained, "--merge", "--quantize", "int4", "--block-size", "16", "--out", filepath.Join(dir, "probe.onnx"), "--data", ds, "--json")
	var r4 exportResult
	if code != 0 || json.Unmarshal([]byte(stdout), &r4) != nil || r4.Quant == nil {
		t.Fatalf("int4 export with data: exit %d: %s", code, stderr)
	}
	drop := r4.Quant.Check.Drop
	if r4.Quant.Check.Top1FP32 != 1 || math.Abs(drop-100*r4.Quant.Check.Disagreement) > 1e-9 || drop <= 0 {
		t.Fatalf("int4 check on the relabelled split: %+v; want fp32 top-1 1 and a drop > 0 equal to the disagreement", r4.Quant.Check)
	}
	lossy := trained
	refused := filepath.Join(dir, "refused.onnx")
	code, _, stderr = sptctl(t, "export", "--model", lossy, "--merge", "--quantize", "int4", "--block-size", "16", "--out", refused, "--data", ds, "--max-drop", fmt.Sprint(drop/2))
	if code != 1 || !strings.Contains(stderr, "more than --max-drop") || !strings.Contains(stderr, "nothing written") || exists(refused) || strings.Count(stderr, "sptctl:") != 1 {
		t.Errorf("--max-drop %v with a drop of %v: exit %d, file written %v: %s", drop/2, drop, code, exists(refused), stderr)
	}
	if code, _, stderr = sptctl(t, "export", "--model", lossy, "--merge", "--quantize", "int4", "--block-size", "16", "--out", refused, "--data", ds, "--max-drop", fmt.Sprint(drop+0.01)); code != 0 || !exists(refused) {
		t.Errorf("--max-drop %v with a drop of %v: exit %d: %s", drop+0.01, drop, code, stderr)
	}

	// Quantizing a quantized model is refused with one line.
	code, _, stderr = sptctl(t, "export", "--model", q8, "--merge", "--quantize", "int8", "--out", filepath.Join(dir, "twice.onnx"))
	if code != 1 || !strings.Contains(stderr, "is quantized already") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("quantizing twice: exit %d: %s", code, stderr)
	}
}

// relabel gives every image of a split the class model predicts for it.
func relabel(t *testing.T, model, ds, split string) {
	t.Helper()
	s, err := ort.Open(model)
	if err != nil {
		t.Fatal(err)
	}
	in, err := imageInput(s.Inputs())
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := onnxio.Load(model)
	p, _, err := modelPreprocess(m, in)
	if err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(ds, split+".txt")
	b, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	xs, err := dataBatches(ds, split, p, in, len(lines))
	if err != nil {
		t.Fatal(err)
	}
	var preds []int
	for _, x := range xs {
		y := exRun(t, model, x)
		k := len(y) / int(x.Shape[0])
		for i := 0; i < int(x.Shape[0]); i++ {
			row := y[i*k : (i+1)*k]
			preds = append(preds, slices.Index(row, slices.Max(row)))
		}
	}
	var out strings.Builder
	for i, l := range lines {
		f := strings.Fields(l)
		fmt.Fprintf(&out, "%s %d\n", f[0], preds[i])
	}
	if err := os.WriteFile(list, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func evalTop1(t *testing.T, model, ds, split string) float64 {
	t.Helper()
	code, stdout, stderr := sptctl(t, "eval", "--model", model, "--data", ds, "--split", split, "--json")
	var e evalResult
	if code != 0 || json.Unmarshal([]byte(stdout), &e) != nil {
		t.Fatalf("eval %s: exit %d: %s", model, code, stderr)
	}
	return e.Top1
}

func TestExportQuantizeBadFlags(t *testing.T) {
	dir := t.TempDir()
	trained := exTrained(t, "../../testdata/tv_op17_alias.onnx", inject.LoRA, 5, 1, filepath.Join(dir, "trained.onnx"), false)
	out := filepath.Join(dir, "out.onnx")
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--merge", "--out", out, "--quantize", "int3"}, `--quantize "int3": want int8 or int4`},
		{[]string{"--sidecar", dir, "--task", "a", "--quantize", "int8"}, "--quantize needs --merge"},
		{[]string{"--merge", "--out", out, "--quantize", "int8", "--block-size", "32"}, "--block-size goes with --quantize int4"},
		{[]string{"--merge", "--out", out, "--block-size", "32"}, "--block-size goes with --quantize"},
		{[]string{"--merge", "--out", out, "--quantize", "int4", "--block-size", "24"}, "block size 24: want a power of two, at least 16"},
		{[]string{"--merge", "--out", out, "--quantize", "int8", "--max-drop", "1"}, "--max-drop needs --data"},
		{[]string{"--merge", "--out", out, "--quantize", "int8", "--data", dir, "--max-drop", "-1"}, "--max-drop -1"},
	} {
		code, stdout, stderr := sptctl(t, append([]string{"export", "--model", trained}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.msg) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || stdout != "" || exists(out) {
			t.Errorf("%v: exit %d, want 2 and one line with %q; stderr:\n%s", c.args, code, c.msg, stderr)
		}
	}
}

// tune refuses a bad --quantize before it runs anything.
func TestTuneQuantizeBadFlag(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := sptctl(t, "tune", "--model", "../../testdata/tv_op17_alias.onnx", "--data", dir, "--out", filepath.Join(dir, "run"), "--quantize", "int3")
	if code != 2 || !strings.Contains(stderr, `tune: --quantize "int3": want int8 or int4`) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || exists(filepath.Join(dir, "run")) {
		t.Errorf("exit %d: %s", code, stderr)
	}
}

// This ONNX Runtime has the int4 kernel; the probe that refuses --quantize int4
// elsewhere runs it and checks its answer. Where the probe fails, export and tune
// refuse int4 with one line (exit 2) before doing anything.
func TestMatMulNBitsProbe(t *testing.T) {
	ortcheck.Init(t)
	if err := matMulNBitsSupported(); err != nil {
		t.Fatalf("ONNX Runtime 1.30's MatMulNBits: %v", err)
	}
	probeMatMulNBits = func() error { return errors.New("Could not find an implementation for MatMulNBits(1) node") }
	defer func() { probeMatMulNBits = matMulNBitsSupported }()
	dir := t.TempDir()
	trained := exTrained(t, "../../testdata/tv_op17_alias.onnx", inject.LoRA, 5, 1, filepath.Join(dir, "trained.onnx"), false)
	out := filepath.Join(dir, "q.onnx")
	for _, args := range [][]string{
		{"export", "--model", trained, "--merge", "--quantize", "int4", "--out", out},
		{"tune", "--model", "../../testdata/tv_op17_alias.onnx", "--data", dir, "--out", filepath.Join(dir, "run"), "--quantize", "int4"},
	} {
		code, _, stderr := sptctl(t, args...)
		if code != 2 || !strings.Contains(stderr, "--quantize int4 needs ONNX Runtime's com.microsoft MatMulNBits kernel") ||
			strings.Count(strings.TrimSpace(stderr), "\n") != 0 || exists(out) || exists(filepath.Join(dir, "run")) {
			t.Errorf("%s without MatMulNBits: exit %d: %s", args[0], code, stderr)
		}
	}
	if code, _, stderr := sptctl(t, "export", "--model", trained, "--merge", "--quantize", "int8", "--out", out); code != 0 {
		t.Errorf("int8 without MatMulNBits: exit %d: %s", code, stderr)
	}
}
