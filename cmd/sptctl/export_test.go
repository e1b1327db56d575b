package main

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/injected"
	"github.com/sptctl/sptctl/internal/fixture/ortcheck"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
)

// exTrained writes a trained model: fixture injected with a plan of typ (LoRA or
// Adapter, about a sixth of the backbone) for classes classes, every trainable tensor
// moved by random values as training would. The base path is recorded unless noBase.
func exTrained(t *testing.T, fx string, typ inject.Type, classes int, seed uint64, out string, noBase bool) string {
	t.Helper()
	f := fixture.Load(t, fx)
	rng := rand.New(rand.NewPCG(seed, 3))
	opt := inject.DefaultOptions()
	opt.Type, opt.Budget, opt.Classes = typ, inject.BackboneParams(f.V, f.G)/6, classes
	p, err := inject.Allocate(f.V, f.G, fixture.RandomScores(f.G, rng), opt)
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(fx)
	if noBase {
		abs = ""
	}
	injected.Apply(t, f.M, p, inject.ApplyOptions{Dropout: 0.1, BasePath: abs})
	injected.Perturb(t, f.M, rng, nil)
	return fixture.Save(t, f.M, out)
}

func exRun(t *testing.T, model string, x ort.Tensor) []float32 {
	t.Helper()
	y, err := ortRun(model, x, computeSettings{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	return y.Data
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func TestExportMerge(t *testing.T) {
	dir := t.TempDir()
	for _, fx := range []string{"../../testdata/tv_op17_alias.onnx", "../../testdata/tv_op14_static.onnx"} {
		name := fixture.Name(fx)
		for _, typ := range []inject.Type{inject.LoRA, inject.Adapter} {
			trained := exTrained(t, fx, typ, 5, 1, filepath.Join(dir, name+"_"+string(typ)+".onnx"), false)
			out := filepath.Join(dir, name+"_"+string(typ)+"_merged.onnx")
			// The base comes from the path inject recorded.
			code, stdout, stderr := sptctl(t, "export", "--model", trained, "--merge", "--out", out, "--json")
			if code != 0 {
				t.Fatalf("%s %s: exit %d: %s", name, typ, code, stderr)
			}
			var res exportResult
			if err := json.Unmarshal([]byte(stdout), &res); err != nil {
				t.Fatalf("bad JSON: %v\n%s", err, stdout)
			}
			if res.Merge == nil || res.Mode != "merge" || !parityHolds(res.Parity, 4) {
				t.Errorf("%s %s: %s", name, typ, stdout)
			}
			if !strings.Contains(stderr, "recorded by inject") || !strings.Contains(stderr, "parity: ONNX Runtime on the export") {
				t.Errorf("%s %s: stderr %s", name, typ, stderr)
			}
			if typ == inject.Adapter && len(res.Merge.Adapters) == 0 {
				t.Errorf("%s: adapters not reported", name)
			}
			x := ortcheck.Input(t, fx, 0)
			if r := fixture.RelDiff(exRun(t, out, x), exRun(t, trained, x)); r > 1e-5 {
				t.Errorf("%s %s: merged vs trained %.3g", name, typ, r)
			}
			// The text form says what could not fold.
			if typ == inject.Adapter {
				code, stdout, _ := sptctl(t, "export", "--model", trained, "--merge", "--out", out, "--base", fx)
				if code != 0 || !strings.Contains(stdout, "cannot fold") {
					t.Errorf("text report: %d %q", code, stdout)
				}
			}
		}
	}
}

func TestExportSidecarTwoTasks(t *testing.T) {
	dir := t.TempDir()
	fx := "../../testdata/tv_op17_dynamic.onnx"
	side := filepath.Join(dir, "side")
	x := ortcheck.Input(t, fx, 0)
	var ino uint64
	var mtime int64
	for i, task := range []string{"cars", "birds"} {
		typ := []inject.Type{inject.LoRA, inject.Adapter}[i]
		trained := exTrained(t, fx, typ, 3+i, uint64(i), filepath.Join(dir, task+".onnx"), false)
		code, stdout, stderr := sptctl(t, "export", "--model", trained, "--sidecar", side, "--task", task, "--json", "--samples", "3")
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", task, code, stderr)
		}
		var res exportResult
		if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Sidecar == nil {
			t.Fatalf("bad JSON: %v\n%s", err, stdout)
		}
		if res.Sidecar.BaseWritten != (i == 0) {
			t.Errorf("%s: base written %v", task, res.Sidecar.BaseWritten)
		}
		if r := fixture.RelDiff(exRun(t, filepath.Join(side, task+".onnx"), x), exRun(t, trained, x)); r > 1e-5 {
			t.Errorf("%s: sidecar vs trained %.3g", task, r)
		}
		fi, _ := os.Stat(filepath.Join(side, export.BaseData))
		in, mt := fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime().UnixNano()
		if i == 0 {
			ino, mtime = in, mt
		} else if in != ino || mt != mtime {
			t.Errorf("base.data rewritten by the second task")
		}
		t.Logf("%s: %s", task, strings.ReplaceAll(strings.TrimSpace(res.Sidecar.String()), "\n", "; "))
	}
}

func TestExportRefuses(t *testing.T) {
	dir := t.TempDir()
	fx := "../../testdata/tv_op17_dynamic.onnx"
	other := "../../testdata/hf_op17.onnx"
	trained := exTrained(t, fx, inject.LoRA, 5, 1, filepath.Join(dir, "trained.onnx"), false)
	unrecorded := exTrained(t, fx, inject.LoRA, 5, 1, filepath.Join(dir, "unrecorded.onnx"), true)
	out := filepath.Join(dir, "out.onnx")
	side := filepath.Join(dir, "side")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"export", "--model", fx, "--merge", "--out", out}, 1, "tv_op17_dynamic.onnx was not made by `sptctl inject` (no sptctl.plan metadata)"},
		{[]string{"export", "--model", fx, "--sidecar", side, "--task", "a"}, 1, "was not made by `sptctl inject`"},
		{[]string{"export", "--model", unrecorded, "--merge", "--out", out}, 1, "records no base model path; give --base"},
		{[]string{"export", "--model", trained, "--merge", "--out", out, "--base", other}, 1, "not the one the model was injected from"},
		{[]string{"export", "--model", trained, "--sidecar", side, "--task", "a", "--base", other}, 1, "not the one the model was injected from"},
		{[]string{"export", "--model", trained, "--merge", "--sidecar", side, "--out", out}, 2, "exclude each other"},
		{[]string{"export", "--model", trained}, 2, "want --merge"},
		{[]string{"export", "--model", trained, "--merge"}, 2, "needs --out"},
		{[]string{"export", "--model", trained, "--sidecar", side}, 2, "needs --task"},
		{[]string{"export", "--model", trained, "--sidecar", side, "--task", "../x"}, 2, "task name"},
		{[]string{"export", "--model", trained, "--merge", "--out", out, "--data", filepath.Join(dir, "nodata")}, 1, "nodata"},
	}
	for _, c := range cases {
		code, _, stderr := sptctl(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args[1:], code, stderr, c.code, c.want)
		}
		if strings.Count(strings.TrimSpace(stderr), "\n") > 0 && code == 2 {
			t.Errorf("%v: usage error should be one line: %q", c.args[1:], stderr)
		}
		if exists(out) || exists(side) {
			t.Fatalf("%v: wrote %s or %s", c.args[1:], out, side)
		}
	}

	// A parity checker that disagrees stops the export before anything is written.
	saved := parityCheckers
	defer func() { parityCheckers = saved }()
	registerParityChecker("skewed executor", func(p string, xs []ort.Tensor, threads int) ([]ort.Tensor, error) {
		ys, err := ortRunAll(p, xs, computeSettings{Threads: threads})
		for _, y := range ys {
			for i := range y.Data {
				y.Data[i] *= 1.001
			}
		}
		return ys, err
	})
	for _, args := range [][]string{
		{"export", "--model", trained, "--merge", "--out", out},
		{"export", "--model", trained, "--sidecar", side, "--task", "a"},
	} {
		code, _, stderr := sptctl(t, args...)
		if code != 1 || !strings.Contains(stderr, "parity check failed: skewed executor") || !strings.Contains(stderr, "relative") {
			t.Errorf("%v: exit %d, %q", args[1:], code, stderr)
		}
		if exists(out) || exists(side) {
			t.Errorf("%v: wrote after a failed parity check", args[1:])
		}
	}
	parityCheckers = saved
	registerParityChecker("failing executor", func(string, []ort.Tensor, int) ([]ort.Tensor, error) { return nil, errors.New("boom") })
	if code, _, stderr := sptctl(t, "export", "--model", trained, "--merge", "--out", out); code != 1 || !strings.Contains(stderr, "boom") || exists(out) {
		t.Errorf("failing checker: exit %d, %q", code, stderr)
	}
}

// The parity check runs on --data samples with the model's preprocessing.
func TestExportParityOnData(t *testing.T) {
	dir := t.TempDir()
	ds := fewShot(t, dir, "0-4", 6)
	fx := "../../testdata/tv_op14_static.onnx"
	trained := exTrained(t, fx, inject.LoRA, 5, 1, filepath.Join(dir, "trained.onnx"), false)
	m, _ := onnxio.Load(trained)
	meta.Set(m, meta.KeyPreprocess, meta.Preprocess{Channels: 1, Height: 28, Width: 28, Mean: []float32{0.3}, Std: []float32{0.4}})
	onnxio.Save(trained, m)
	code, stdout, stderr := sptctl(t, "export", "--model", trained, "--merge", "--out", filepath.Join(dir, "m.onnx"), "--data", ds, "--samples", "5", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res exportResult
	json.Unmarshal([]byte(stdout), &res)
	if !parityHolds(res.Parity, 6) || res.Parity[0].Inputs != 6 { // 5 samples in batches of 2
		t.Errorf("parity %+v", res.Parity)
	}
	if !strings.Contains(stderr, "parity samples: 5 images") || !strings.Contains(stderr, "from the model") {
		t.Errorf("stderr %s", stderr)
	}
}

// parityHolds reports whether an export checked every executor (the libtorch one and
// ONNX Runtime on the export) on at least n inputs, all within 1e-5.
func parityHolds(ps []parityResult, n int) bool {
	if len(ps) != 1+len(parityCheckers) || !strings.HasPrefix(ps[0].What, "libtorch executor") {
		return false
	}
	for _, p := range ps {
		if p.Rel > 1e-5 || p.Inputs < n {
			return false
		}
	}
	return true
}
