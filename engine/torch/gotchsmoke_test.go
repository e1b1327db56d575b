package torch

// Smoke tests for gotch as scripts/setup.sh builds it (third_party/gotch, patched
// for Debian's libtorch 1.13.1), for the gotch bugs the patch fixes, and for the
// libtorch thread count. Every torch call runs on one goroutine locked to its OS
// thread (grad mode and gotch's last-error slot are per OS thread).

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// smokeOnTorchThread runs f on a fresh goroutine locked to its OS thread and
// returns f's error. The thread ends with the goroutine (it never unlocks), so
// no per-thread torch state leaks into other tests.
func smokeOnTorchThread(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("panic: %v", r)
			}
		}()
		done <- f()
	}()
	return <-done
}

func smokeRun(t *testing.T, f func() error) {
	t.Helper()
	if err := smokeOnTorchThread(f); err != nil {
		t.Fatal(err)
	}
}

// smokeTensor makes a float32 tensor of the given shape from row-major values.
func smokeTensor(v []float32, shape ...int64) (*ts.Tensor, error) {
	flat, err := ts.OfSlice(v)
	if err != nil {
		return nil, err
	}
	return flat.Reshape(shape, true)
}

// smokeValues copies a tensor's values out as float64.
func smokeValues(t *ts.Tensor) ([]float64, error) {
	d, err := t.Totype(gotch.Double, false)
	if err != nil {
		return nil, err
	}
	defer d.MustDrop()
	out := make([]float64, d.Numel())
	if err := d.CopyData(out, uint(len(out))); err != nil {
		return nil, err
	}
	return out, nil
}

func smokeCompare(what string, got, want []float64, tol float64) error {
	if len(got) != len(want) {
		return fmt.Errorf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Abs(got[i]-want[i]) > tol*(1+math.Abs(want[i])) {
			return fmt.Errorf("%s[%d] = %g, want %g (all: %v, want %v)", what, i, got[i], want[i], got, want)
		}
	}
	return nil
}

// matmul of row-major [n,k] x [k,m] in float64, by hand.
func smokeMatMul(a, b []float64, n, k, m int) []float64 {
	c := make([]float64, n*m)
	for i := 0; i < n; i++ {
		for j := 0; j < m; j++ {
			s := 0.0
			for l := 0; l < k; l++ {
				s += a[i*k+l] * b[l*m+j]
			}
			c[i*m+j] = s
		}
	}
	return c
}

func smokeTranspose(a []float64, n, m int) []float64 {
	t := make([]float64, n*m)
	for i := 0; i < n; i++ {
		for j := 0; j < m; j++ {
			t[j*n+i] = a[i*m+j]
		}
	}
	return t
}

func smokeF64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// TestGotchMatMulBackward: Y = A·B, L = Σ (Y ⊙ W); checks Y, L, ∂L/∂A = W·Bᵀ and
// ∂L/∂B = Aᵀ·W against values computed in Go, through both RunBackward
// (autograd.grad) and Backward (.grad).
func TestGotchMatMulBackward(t *testing.T) {
	const n, k, m = 2, 3, 4
	av := []float32{1, -2, 3, 0.5, 4, -1}
	bv := []float32{2, 0, -1, 3, 1, 1, 0.25, -2, -3, 2, 1, 0.5}
	wv := []float32{1, 2, 3, 4, -1, -2, 0.5, 0}
	a64, b64, w64 := smokeF64(av), smokeF64(bv), smokeF64(wv)
	wantY := smokeMatMul(a64, b64, n, k, m)
	wantL := 0.0
	for i := range wantY {
		wantL += wantY[i] * w64[i]
	}
	wantDA := smokeMatMul(w64, smokeTranspose(b64, k, m), n, m, k)
	wantDB := smokeMatMul(smokeTranspose(a64, n, k), w64, k, n, m)

	smokeRun(t, func() error {
		a, err := smokeTensor(av, n, k)
		if err != nil {
			return err
		}
		defer a.MustDrop()
		b, err := smokeTensor(bv, k, m)
		if err != nil {
			return err
		}
		defer b.MustDrop()
		w, err := smokeTensor(wv, n, m)
		if err != nil {
			return err
		}
		defer w.MustDrop()
		// RequiresGrad_ is an in-place wrapper: the patched one keeps a's handle.
		if err := a.RequiresGrad_(true); err != nil {
			return err
		}
		if err := b.RequiresGrad_(true); err != nil {
			return err
		}
		if !a.MustRequiresGrad() || !b.MustRequiresGrad() {
			return fmt.Errorf("requires_grad not set")
		}

		y, err := a.Matmul(b, false)
		if err != nil {
			return err
		}
		defer y.MustDrop()
		yw, err := y.Mul(w, false)
		if err != nil {
			return err
		}
		defer yw.MustDrop()
		loss, err := yw.Sum(gotch.Float, false)
		if err != nil {
			return err
		}
		defer loss.MustDrop()

		gotY, err := smokeValues(y)
		if err != nil {
			return err
		}
		if err := smokeCompare("Y", gotY, wantY, 1e-6); err != nil {
			return err
		}
		gotL, err := smokeValues(loss)
		if err != nil {
			return err
		}
		if err := smokeCompare("L", gotL, []float64{wantL}, 1e-6); err != nil {
			return err
		}

		grads, err := ts.RunBackward([]*ts.Tensor{loss}, []*ts.Tensor{a, b}, true, false)
		if err != nil {
			return fmt.Errorf("RunBackward: %w", err)
		}
		for i, want := range [][]float64{wantDA, wantDB} {
			got, err := smokeValues(grads[i])
			grads[i].MustDrop()
			if err != nil {
				return err
			}
			if err := smokeCompare(fmt.Sprintf("RunBackward grad %d", i), got, want, 1e-6); err != nil {
				return err
			}
		}

		if err := loss.Backward(); err != nil {
			return err
		}
		for _, c := range []struct {
			name string
			x    *ts.Tensor
			want []float64
		}{{"dL/dA", a, wantDA}, {"dL/dB", b, wantDB}} {
			g, err := c.x.Grad(false)
			if err != nil {
				return err
			}
			got, err := smokeValues(g)
			g.MustDrop()
			if err != nil {
				return err
			}
			if err := smokeCompare(c.name, got, c.want, 1e-6); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestGotchPatchedBugs exercises each gotch bug that scripts/patch-gotch.py fixes.
func TestGotchPatchedBugs(t *testing.T) {
	t.Run("GradSetEnabledReturnsPreviousState", func(t *testing.T) {
		smokeRun(t, func() error {
			prev, err := ts.GradSetEnabled(false)
			if err != nil {
				return err
			}
			back, err := ts.GradSetEnabled(true)
			if err != nil {
				return err
			}
			if !prev || back {
				return fmt.Errorf("GradSetEnabled returned %v then %v, want true then false", prev, back)
			}
			return nil
		})
	})
	t.Run("BoolResults", func(t *testing.T) {
		smokeRun(t, func() error {
			x, err := ts.Zeros([]int64{2, 3}, gotch.Float, gotch.CPU)
			if err != nil {
				return err
			}
			defer x.MustDrop()
			y, err := ts.Zeros([]int64{3, 2}, gotch.Float, gotch.CPU)
			if err != nil {
				return err
			}
			defer y.MustDrop()
			for i := 0; i < 100; i++ {
				same, err := x.IsSameSize(x, false)
				if err != nil {
					return err
				}
				diff, err := x.IsSameSize(y, false)
				if err != nil {
					return err
				}
				if !same || diff {
					return fmt.Errorf("IsSameSize: same %v, different %v", same, diff)
				}
			}
			if x.MustRequiresGrad() || !x.MustDefined() {
				return fmt.Errorf("requires_grad / defined read wrong")
			}
			return nil
		})
	})
	t.Run("FourOutputs", func(t *testing.T) {
		// linalg_lstsq writes 4 result handles; gotch's malloc(0) buffer held 3.
		smokeRun(t, func() error {
			a, err := smokeTensor([]float32{1, 0, 0, 1, 1, 1}, 3, 2)
			if err != nil {
				return err
			}
			defer a.MustDrop()
			b, err := smokeTensor([]float32{1, 2, 3}, 3, 1)
			if err != nil {
				return err
			}
			defer b.MustDrop()
			for i := 0; i < 300; i++ {
				sol, res, rank, sv, err := a.LinalgLstsq(b, nil, "gelsd", false)
				if err != nil {
					return err
				}
				got, err := smokeValues(sol)
				if err == nil {
					err = smokeCompare("lstsq solution", got, []float64{1, 2}, 1e-5)
				}
				if err == nil && i == 0 {
					var r []float64
					if r, err = smokeValues(rank); err == nil && (len(r) != 1 || r[0] != 2) {
						err = fmt.Errorf("lstsq rank %v, want 2", r)
					}
				}
				for _, x := range []*ts.Tensor{sol, res, rank, sv} {
					x.MustDrop()
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	})
	t.Run("InPlaceOpsKeepNoExtraHandle", func(t *testing.T) {
		// A leaked handle keeps the storage alive: 64 MiB must go back to the OS
		// (glibc mmaps blocks this big) when the tensor is dropped after in-place ops.
		smokeRun(t, func() error {
			before, err := smokeRSS()
			if err != nil {
				return err
			}
			big, err := ts.Zeros([]int64{16 << 20}, gotch.Float, gotch.CPU)
			if err != nil {
				return err
			}
			if err := big.Fill_(ts.FloatScalar(1)); err != nil {
				return err
			}
			for i := 0; i < 3; i++ {
				if err := big.AddScalar_(ts.FloatScalar(0.5)); err != nil {
					return err
				}
			}
			first, err := big.Float64Value([]int64{123})
			if err != nil {
				return err
			}
			if first != 2.5 {
				return fmt.Errorf("after Fill_(1) and 3×AddScalar_(0.5): %g, want 2.5", first)
			}
			with, err := smokeRSS()
			if err != nil {
				return err
			}
			if err := big.Drop(); err != nil {
				return err
			}
			after, err := smokeRSS()
			if err != nil {
				return err
			}
			const mib = 1 << 20
			if with-before < 48*mib || with-after < 48*mib {
				return fmt.Errorf("RSS %d MiB before, %d MiB with a 64 MiB tensor, %d MiB after dropping it: storage not freed",
					before/mib, with/mib, after/mib)
			}
			return nil
		})
	})
	t.Run("TensorLists", func(t *testing.T) {
		smokeRun(t, func() error {
			x, err := smokeTensor([]float32{0, 1, 2, 3, 4, 5}, 6)
			if err != nil {
				return err
			}
			defer x.MustDrop()
			for i := 0; i < 100; i++ {
				parts, err := x.Split(2, 0)
				if err != nil {
					return err
				}
				if len(parts) != 3 {
					return fmt.Errorf("Split gave %d parts, want 3", len(parts))
				}
				for j, p := range parts {
					got, err := smokeValues(p)
					p.MustDrop()
					if err != nil {
						return err
					}
					if err := smokeCompare("split part", got, []float64{float64(2 * j), float64(2*j + 1)}, 0); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
	t.Run("StubbedWrapperReportsError", func(t *testing.T) {
		// squeeze over several dims is new in libtorch 2.0: stubbed at set-up.
		smokeRun(t, func() error {
			x, err := ts.Zeros([]int64{1, 2, 1}, gotch.Float, gotch.CPU)
			if err != nil {
				return err
			}
			defer x.MustDrop()
			_, err = x.SqueezeDims([]int64{0, 2}, false)
			if err == nil || !strings.Contains(err.Error(), "not available in this libtorch") {
				return fmt.Errorf("SqueezeDims: err = %v, want \"not available in this libtorch\"", err)
			}
			// The error slot is clear again: the next call succeeds.
			y, err := x.Squeeze(false)
			if err != nil {
				return err
			}
			y.MustDrop()
			return nil
		})
	})
}

// smokeRSS returns the process's resident set size in bytes.
func smokeRSS() (int64, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("short /proc/self/statm: %q", b)
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return pages * int64(os.Getpagesize()), nil
}

func TestNumThreads(t *testing.T) {
	smokeRun(t, func() error {
		for _, n := range []int{1, 2, 1} {
			SetNumThreads(n)
			if got := NumThreads(); got != n {
				return fmt.Errorf("SetNumThreads(%d): NumThreads() = %d", n, got)
			}
		}
		SetNumThreads(0)
		if got, want := NumThreads(), runtime.NumCPU(); got != want {
			return fmt.Errorf("SetNumThreads(0): NumThreads() = %d, want NumCPU() = %d", got, want)
		}
		return nil
	})
}

// TestOpenBLASLoaded: libtorch's BLAS must be OpenBLAS (scripts/setup.sh points
// Debian's libblas.so.3 alternative at it); reference BLAS is ~50× slower.
func TestOpenBLASLoaded(t *testing.T) {
	smokeRun(t, func() error {
		x, err := ts.Ones([]int64{64, 64}, gotch.Float, gotch.CPU)
		if err != nil {
			return err
		}
		defer x.MustDrop()
		y, err := x.Matmul(x, false)
		if err != nil {
			return err
		}
		y.MustDrop()
		maps, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			return err
		}
		var libs []string
		for _, line := range bytes.Split(maps, []byte("\n")) {
			if f := strings.Fields(string(line)); len(f) >= 6 &&
				(strings.Contains(f[5], "blas") || strings.Contains(f[5], "lapack")) {
				libs = append(libs, f[5])
			}
		}
		for _, l := range libs {
			if strings.Contains(l, "openblas") {
				t.Logf("BLAS: %s", l)
				return nil
			}
		}
		return fmt.Errorf("OpenBLAS is not loaded (BLAS libraries mapped: %v); run scripts/setup.sh", libs)
	})
}

// BenchmarkMatMul1024 measures a 1024×1024 float32 matmul with one libtorch thread
// and with one per CPU. OpenBLAS gives a few hundred GFLOP/s on 2 cores; Debian's
// reference BLAS about 5.
func BenchmarkMatMul1024(b *testing.B) {
	counts := []int{1}
	if runtime.NumCPU() > 1 {
		counts = append(counts, runtime.NumCPU())
	}
	for _, threads := range counts {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			if err := smokeOnTorchThread(func() error { return smokeBenchMatMul(b, 1024, threads) }); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func smokeBenchMatMul(b *testing.B, n int64, threads int) error {
	SetNumThreads(threads)
	x, err := ts.Randn([]int64{n, n}, gotch.Float, gotch.CPU)
	if err != nil {
		return err
	}
	defer x.MustDrop()
	y, err := ts.Randn([]int64{n, n}, gotch.Float, gotch.CPU)
	if err != nil {
		return err
	}
	defer y.MustDrop()
	for i := 0; i < 3; i++ { // warm up the thread pool
		z, err := x.Matmul(y, false)
		if err != nil {
			return err
		}
		z.MustDrop()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		z, err := x.Matmul(y, false)
		if err != nil {
			return err
		}
		z.MustDrop()
	}
	b.StopTimer()
	b.ReportMetric(2*float64(n*n*n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	if got := NumThreads(); got != threads {
		return fmt.Errorf("NumThreads() = %d, want %d", got, threads)
	}
	return nil
}
