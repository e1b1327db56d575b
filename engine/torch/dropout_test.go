package torch

import (
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// dropoutDraw seeds libtorch's generator, runs dropout on x with n threads and
// returns the output as float32 (a bfloat16 output cast exactly).
func dropoutDraw(x *ts.Tensor, ratio float64, seed uint64, threads int) ([]float32, error) {
	SetNumThreads(threads)
	defer SetNumThreads(0)
	if err := SetSeed(seed); err != nil {
		return nil, err
	}
	y, err := dropout(x, ratio)
	if err != nil {
		return nil, err
	}
	defer y.Drop()
	if y.DType() != x.DType() {
		return nil, fmt.Errorf("output %v, input %v", y.DType(), x.DType())
	}
	f, err := asFloat32(y.MustShallowClone())
	if err != nil {
		return nil, err
	}
	defer f.Drop()
	return copyFloats(f)
}

// TestDropoutKeepsAndScales: float32 and bfloat16, an odd length (the last word's
// half): about 1 - ratio of the elements kept, each scaled by 1/(1 - ratio) (rounded
// to the dtype), the rest 0; the same seed gives the same mask with 1 or 2 threads, a
// new seed another.
func TestDropoutKeepsAndScales(t *testing.T) {
	const n, ratio = 100001, 0.3
	ones := make([]float32, n)
	for k := range ones {
		ones[k] = 1
	}
	for _, dt := range []gotch.DType{gotch.Float, gotch.BFloat16} {
		t.Run(dt.String(), func(t *testing.T) {
			onTorch(t, func() error {
				x32, err := tensorFromFloats(ones, []int64{n})
				if err != nil {
					return err
				}
				defer x32.Drop()
				x, err := x32.Totype(dt, false)
				if err != nil {
					return err
				}
				defer x.Drop()
				scale := float32(1 / (1 - ratio))
				if dt == gotch.BFloat16 {
					scale = 1.4296875 // 1/0.7 = 1.428571… rounded to bfloat16's 8 bits
				}
				a, err := dropoutDraw(x, ratio, 42, 1)
				if err != nil {
					return err
				}
				zeros := 0
				for k, v := range a {
					switch v {
					case 0:
						zeros++
					case scale:
					default:
						return fmt.Errorf("element %d: %g, want 0 or %g", k, v, scale)
					}
				}
				// 5 standard deviations of the dropped count.
				if sd := math.Sqrt(n * ratio * (1 - ratio)); math.Abs(float64(zeros)-n*ratio) > 5*sd {
					t.Errorf("dropped %d of %d, want %.0f ± %.0f", zeros, n, n*ratio, 5*sd)
				}
				b, err := dropoutDraw(x, ratio, 42, 2)
				if err != nil {
					return err
				}
				if fmt.Sprint(a) != fmt.Sprint(b) {
					t.Error("same seed, different masks with 1 and 2 threads")
				}
				c, err := dropoutDraw(x, ratio, 43, 2)
				if err != nil {
					return err
				}
				if fmt.Sprint(a) == fmt.Sprint(c) {
					t.Error("seeds 42 and 43 gave the same mask")
				}
				return nil
			})
		})
	}
}

// TestDropoutGradient: the gradient of sum(dropout(x) ⊙ r) is r ⊙ mask / (1 - ratio),
// the mask read off the forward's output (x has no zeros): backward recomputes the
// forward's mask.
func TestDropoutGradient(t *testing.T) {
	const n, ratio = 4099, 0.5
	rng := rand.New(rand.NewSource(1))
	xs, rs := make([]float32, n), make([]float32, n)
	for k := range xs {
		xs[k] = 1 + rng.Float32()
		rs[k] = float32(rng.NormFloat64())
	}
	onTorch(t, func() error {
		x, err := tensorFromFloats(xs, []int64{n})
		if err != nil {
			return err
		}
		defer x.Drop()
		if err := x.RequiresGrad_(true); err != nil {
			return err
		}
		r, err := tensorFromFloats(rs, []int64{n})
		if err != nil {
			return err
		}
		defer r.Drop()
		if err := SetSeed(7); err != nil {
			return err
		}
		y, err := dropout(x, ratio)
		if err != nil {
			return err
		}
		defer y.Drop()
		// Draw from the generator between forward and backward: backward must not.
		if _, err := dropoutDraw(r, ratio, 99, 2); err != nil {
			return err
		}
		ys, err := copyFloats(y)
		if err != nil {
			return err
		}
		if err := backwardOfWeightedSum(y, r); err != nil {
			return err
		}
		g, err := x.Grad(false)
		if err != nil {
			return err
		}
		defer g.Drop()
		gs, err := copyFloats(g)
		if err != nil {
			return err
		}
		kept := 0
		for k := range gs {
			want := float32(0)
			if ys[k] != 0 {
				kept++
				want = rs[k] * 2
				if ys[k] != xs[k]*2 {
					return fmt.Errorf("element %d: output %g, want %g or 0", k, ys[k], xs[k]*2)
				}
			}
			if gs[k] != want {
				return fmt.Errorf("element %d: gradient %g, want %g (output %g)", k, gs[k], want, ys[k])
			}
		}
		if kept == 0 || kept == n {
			return fmt.Errorf("kept %d of %d", kept, n)
		}
		return nil
	})
}
