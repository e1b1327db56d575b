package ort

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/npy"
)

const testdata = "../../testdata"

func mustInit(tb testing.TB) {
	tb.Helper()
	if err := Init(); err != nil {
		tb.Fatalf("ONNX Runtime is needed for these tests: %v", err)
	}
}

func readNpy(tb testing.TB, p string) *npy.Array {
	tb.Helper()
	a, err := npy.Read(p)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// repeatBatch builds a batch of n images from x (batch first), cycling x's images.
func repeatBatch(x *npy.Array, n int64) Tensor {
	r := fixture.Repeat(x, n)
	return Tensor{Shape: r.Shape, Data: r.Float32}
}

// TestFixturesMatchPyTorch runs every fixture with ONNX Runtime on its input and
// compares with PyTorch's output, the independent oracle.
func TestFixturesMatchPyTorch(t *testing.T) {
	mustInit(t)
	t.Logf("ONNX Runtime %s from %s", Version(), LibraryPath())
	for _, path := range fixture.Paths(t) {
		name := strings.TrimSuffix(filepath.Base(path), ".onnx")
		t.Run(name, func(t *testing.T) {
			base := strings.TrimSuffix(path, ".onnx")
			x := readNpy(t, base+".input.npy")
			want := readNpy(t, base+".output.npy")
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ins, outs := s.Inputs(), s.Outputs()
			if len(ins) != 1 || ins[0].Name != "input" || ins[0].Type != "float32" || len(ins[0].Shape) != 4 ||
				len(outs) != 1 || outs[0].Name != "logits" || len(outs[0].Shape) != 2 || outs[0].Shape[1] != 10 {
				t.Fatalf("inputs %v, outputs %v", ins, outs)
			}
			got, err := s.Run(map[string]Tensor{"input": {Shape: x.Shape, Data: x.Float32}})
			if err != nil {
				t.Fatal(err)
			}
			y := got["logits"]
			if !reflect.DeepEqual(y.Shape, want.Shape) {
				t.Fatalf("output shape %v, PyTorch %v", y.Shape, want.Shape)
			}
			d := fixture.MaxAbsDiff(y.Data, want.Float32)
			t.Logf("%s: max |ORT - PyTorch| = %.3g over %d logits", name, d, len(y.Data))
			if d > 1e-5 {
				t.Errorf("%s: max abs diff %g > 1e-5", name, d)
			}

			if ins[0].Shape[0] != -1 {
				return
			}
			t.Logf("%s: dynamic batch, also run at batch 1 and 3", name)
			// Dynamic batch: other batch sizes run, and agree with the batch-2 run.
			for _, n := range []int64{1, 3} {
				got, err := s.Run(map[string]Tensor{"input": repeatBatch(x, n)})
				if err != nil {
					t.Fatalf("batch %d: %v", n, err)
				}
				y := got["logits"]
				if !reflect.DeepEqual(y.Shape, []int64{n, 10}) {
					t.Fatalf("batch %d: output shape %v", n, y.Shape)
				}
				for _, v := range y.Data {
					if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
						t.Fatalf("batch %d: non-finite output %v", n, y.Data)
					}
				}
				if d := fixture.MaxAbsDiff(y.Data[:10], want.Float32[:10]); d > 1e-5 {
					t.Errorf("batch %d: image 0 differs from PyTorch by %g", n, d)
				}
			}
		})
	}
}

func TestInputChecks(t *testing.T) {
	mustInit(t)
	s, err := Open(filepath.Join(testdata, "tv_op14_static.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if in := s.Inputs(); !reflect.DeepEqual(in[0].Shape, []int64{2, 1, 28, 28}) {
		t.Fatalf("static input shape %v", in[0].Shape)
	}
	img := make([]float32, 3*28*28)
	for _, c := range []struct {
		in   map[string]Tensor
		want []string
	}{
		{map[string]Tensor{"input": {Shape: []int64{3, 1, 28, 28}, Data: img}},
			[]string{`input "input"`, "got shape [3 1 28 28]", "want [2 1 28 28]"}},
		{map[string]Tensor{"input": {Shape: []int64{2, 28, 28}, Data: img[:2*28*28]}},
			[]string{`input "input"`, "got shape [2 28 28]", "want [2 1 28 28]"}},
		{map[string]Tensor{"input": {Shape: []int64{2, 1, 28, 28}, Data: img[:100]}},
			[]string{`input "input"`, "needs 1568 values, got 100"}},
		{map[string]Tensor{"input": {Shape: []int64{2, 1, 28, 28}, Int64: make([]int64, 1568)}},
			[]string{`input "input"`, "wants float32"}},
		{map[string]Tensor{}, []string{`missing input "input"`}},
		{map[string]Tensor{"input": {Shape: []int64{2, 1, 28, 28}, Data: img[:1568]}, "x": {}},
			[]string{`unknown input "x"`, "input float32[2 1 28 28]"}},
	} {
		_, err := s.Run(c.in)
		if err == nil {
			t.Errorf("Run(%v) succeeded", c.want)
			continue
		}
		for _, w := range append(c.want, "tv_op14_static.onnx") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q lacks %q", err, w)
			}
		}
	}

	// A dynamic batch still checks the fixed dimensions.
	d, err := Open(filepath.Join(testdata, "tv_op17_dynamic.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if in := d.Inputs(); !reflect.DeepEqual(in[0].Shape, []int64{-1, 3, 32, 32}) {
		t.Fatalf("dynamic input shape %v", in[0].Shape)
	}
	_, err = d.Run(map[string]Tensor{"input": {Shape: []int64{1, 3, 28, 28}, Data: make([]float32, 3*28*28)}})
	if err == nil || !strings.Contains(err.Error(), "got shape [1 3 28 28], want [? 3 32 32]") {
		t.Errorf("wrong image size: %v", err)
	}
}

func TestBadModels(t *testing.T) {
	mustInit(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.onnx")
	if err := os.WriteFile(bad, []byte("this is not an ONNX model\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("Open(non-ONNX): %v", err)
	}
	missing := filepath.Join(dir, "missing.onnx")
	if _, err := Open(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Open(missing): %v", err)
	}
	if _, err := RunFile(bad, nil); err == nil {
		t.Error("RunFile(non-ONNX) succeeded")
	}
	if _, err := OpenBytes([]byte("garbage")); err == nil {
		t.Error("OpenBytes(garbage) succeeded")
	}
	if _, err := OpenBytes(nil); err == nil {
		t.Error("OpenBytes(nil) succeeded")
	}
	// A truncated model is an error too, not a crash.
	b, err := os.ReadFile(filepath.Join(testdata, "tv_op17_dynamic.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBytes(b[:len(b)/2]); err == nil {
		t.Error("OpenBytes(truncated) succeeded")
	}
}

func TestOpenBytesRunFileClose(t *testing.T) {
	mustInit(t)
	path := filepath.Join(testdata, "tv_op17_dynamic.onnx")
	x := readNpy(t, filepath.Join(testdata, "tv_op17_dynamic.input.npy"))
	want := readNpy(t, filepath.Join(testdata, "tv_op17_dynamic.output.npy"))
	in := map[string]Tensor{"input": {Shape: x.Shape, Data: x.Float32}}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	if d := fixture.MaxAbsDiff(out["logits"].Data, want.Float32); d > 1e-5 {
		t.Errorf("OpenBytes: diff %g", d)
	}

	// Concurrent runs on one session.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := s.Run(in)
			if err == nil && fixture.MaxAbsDiff(out["logits"].Data, want.Float32) > 1e-5 {
				err = os.ErrInvalid
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Errorf("concurrent run: %v", err)
		}
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Run(in); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Run after Close: %v", err)
	}

	out, err = RunFile(path, in)
	if err != nil {
		t.Fatal(err)
	}
	if d := fixture.MaxAbsDiff(out["logits"].Data, want.Float32); d > 1e-5 {
		t.Errorf("RunFile: diff %g", d)
	}
	// The input was not modified.
	if !slices.Equal(in["input"].Data, x.Float32) {
		t.Error("Run modified its input")
	}
}

func TestFindLibrary(t *testing.T) {
	t.Setenv(EnvLib, filepath.Join(t.TempDir(), "nope.so"))
	if _, err := findLibrary(); err == nil || !strings.Contains(err.Error(), EnvLib) {
		t.Errorf("missing $%s: %v", EnvLib, err)
	}
	t.Setenv(EnvLib, "")
	p, err := findLibrary()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(p, libRel) || !filepath.IsAbs(p) {
		t.Errorf("found %s", p)
	}
	// From a folder with no module above it, and no library by the test binary,
	// the error says what to do.
	dir := t.TempDir()
	t.Chdir(dir)
	if _, err := findLibrary(); err == nil || !strings.Contains(err.Error(), "make setup") {
		t.Errorf("no library: %v", err)
	}
}

// BenchmarkRunFixture measures one inference of tv_op17_dynamic at batch 8.
func BenchmarkRunFixture(b *testing.B) {
	mustInit(b)
	s, err := Open(filepath.Join(testdata, "tv_op17_dynamic.onnx"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	x := readNpy(b, filepath.Join(testdata, "tv_op17_dynamic.input.npy"))
	in := map[string]Tensor{"input": repeatBatch(x, 8)}
	if _, err := s.Run(in); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Run(in); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/8, "µs/image")
}

// tasks is how many OS threads the process has.
func tasks(tb testing.TB) int {
	tb.Helper()
	d, err := os.ReadDir("/proc/self/task")
	if err != nil {
		tb.Skipf("no /proc/self/task: %v", err)
	}
	return len(d)
}

// Threads: a count below one is refused before anything loads; the count is the
// session's intra-op pool (ONNX Runtime starts n-1 threads beside the caller's); one
// thread and four give the same outputs, PyTorch's.
func TestThreads(t *testing.T) {
	mustInit(t)
	path := filepath.Join(testdata, "tv_op17_dynamic.onnx")
	for _, n := range []int{0, -3} {
		if _, err := Open(path, Threads(n)); err == nil || !strings.Contains(err.Error(), "threads") {
			t.Errorf("Open with Threads(%d): %v; want an error naming the threads", n, err)
		}
		if _, err := OpenBytes([]byte("x"), Threads(n)); err == nil || !strings.Contains(err.Error(), "threads") {
			t.Errorf("OpenBytes with Threads(%d): %v; want an error naming the threads", n, err)
		}
	}
	x := readNpy(t, filepath.Join(testdata, "tv_op17_dynamic.input.npy"))
	want := readNpy(t, filepath.Join(testdata, "tv_op17_dynamic.output.npy"))
	in := map[string]Tensor{"input": {Shape: x.Shape, Data: x.Float32}}
	var outs [][]float32
	var started []int
	for _, n := range []int{1, 4} {
		before := tasks(t)
		s, err := Open(path, Threads(n))
		if err != nil {
			t.Fatal(err)
		}
		started = append(started, tasks(t)-before)
		out, err := s.Run(in)
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		if d := fixture.MaxAbsDiff(out["logits"].Data, want.Float32); d > 1e-5 {
			t.Errorf("Threads(%d): differs from PyTorch by %g", n, d)
		}
		outs = append(outs, out["logits"].Data)
	}
	if d := fixture.MaxAbsDiff(outs[0], outs[1]); d > 1e-6 {
		t.Errorf("1 thread vs 4: outputs differ by %g", d)
	}
	if started[1]-started[0] < 3 {
		t.Errorf("a 1-thread session started %d OS threads, a 4-thread one %d; want 3 more", started[0], started[1])
	}
}
