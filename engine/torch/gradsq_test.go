package torch

import (
	"math"
	"os"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/onnxio"
)

// TestSquareGradsMatchesGrads: a Program compiled with SquareGrads keeps no gradient
// and its running sums equal Σ grad² of a plain Program's gradients over the same
// batches, on a dynamic-batch graph and on a fixed-batch-2 graph run in micro-batches
// (where the square must be of the batch's summed gradient, not of each run's). A
// third Program spills its sums to a file after every batch: its sums must equal the
// second's to the bit.
func TestSquareGradsMatchesGrads(t *testing.T) {
	for _, fx := range []string{"tv_op17_dynamic", "tv_op14_static"} {
		t.Run(fx, func(t *testing.T) {
			m, x, _ := loadFixture(t, fx)
			per := int(onnxio.NumElements(x.Shape[1:]))
			// 3 images: two batches of them, the second with other labels.
			imgs := append(append([]float32{}, x.Float32...), x.Float32[:per]...)
			labels := [][]int64{{1, 4, 7}, {9, 0, 3}, {2, 2, 5}}
			spillFile, err := os.CreateTemp(t.TempDir(), "spill")
			if err != nil {
				t.Fatal(err)
			}
			defer spillFile.Close()
			onTorch(t, func() error {
				all, err := allParams(m)
				if err != nil {
					return err
				}
				plain, err := Compile(m, engine.Options{Trainable: all})
				if err != nil {
					return err
				}
				defer plain.Close()
				sq, err := Compile(m, engine.Options{Trainable: all, SquareGrads: true})
				if err != nil {
					return err
				}
				defer sq.Close()
				sp, err := Compile(m, engine.Options{Trainable: all, SquareGrads: true})
				if err != nil {
					return err
				}
				defer sp.Close()
				want := map[string][]float64{}
				for b, lab := range labels {
					for _, p := range []*Program{plain, sq, sp} {
						if err := p.ZeroGrad(); err != nil {
							return err
						}
						res, err := p.ForwardBackward(imgs, lab, 3)
						if err != nil {
							return err
						}
						if micro := fx == "tv_op14_static"; res.MicroBatched != micro {
							t.Fatalf("micro-batched %v, want %v", res.MicroBatched, micro)
						}
					}
					if b < 2 { // the first sums go through the file twice, the last not at all
						if err := sp.SpillGradSquares(spillFile); err != nil {
							return err
						}
					}
					for _, n := range all {
						g, err := plain.Grad(n)
						if err != nil {
							return err
						}
						if want[n] == nil {
							want[n] = make([]float64, len(g))
						}
						for i, v := range g {
							want[n][i] += float64(v) * float64(v)
						}
						kept, err := sq.Grad(n)
						if err != nil {
							return err
						}
						for _, v := range kept {
							if v != 0 {
								t.Fatalf("%s: SquareGrads kept a gradient", n)
							}
						}
					}
				}
				for _, n := range all {
					got, err := sq.GradSquareSum(n)
					if err != nil {
						return err
					}
					var num, den float64
					for i, v := range got {
						d := float64(v) - want[n][i]
						num += d * d
						den += want[n][i] * want[n][i]
					}
					if num > 1e-10*den || (den == 0 && num != 0) {
						t.Errorf("%s: Σ grad² differs (relative squared error %.3g)", n, num/max(den, 1e-300))
					}
					spilled, err := sp.GradSquareSum(n)
					if err != nil {
						return err
					}
					for i := range got {
						if math.Float32bits(got[i]) != math.Float32bits(spilled[i]) {
							t.Fatalf("%s[%d]: spilled sum %g, in memory %g", n, i, spilled[i], got[i])
						}
					}
				}
				return nil
			})
		})
	}
}

// TestSpillErrorsNameTheFile: a spill file that cannot be written, or read back
// during backward or by GradSquareSum, fails with an error naming it.
func TestSpillErrorsNameTheFile(t *testing.T) {
	m, x, _ := loadFixture(t, "tv_op17_dynamic")
	dir := t.TempDir()
	onTorch(t, func() error {
		all, err := allParams(m)
		if err != nil {
			return err
		}
		p, err := Compile(m, engine.Options{Trainable: all, SquareGrads: true})
		if err != nil {
			return err
		}
		defer p.Close()
		if _, err := p.ForwardBackward(x.Float32, []int64{1, 4}, 2); err != nil {
			return err
		}
		// Read-only: the spill's write fails, and the sums stay in memory.
		ro, err := os.Create(dir + "/ro")
		if err != nil {
			return err
		}
		ro.Close()
		ro, err = os.Open(dir + "/ro")
		if err != nil {
			return err
		}
		defer ro.Close()
		if err := p.SpillGradSquares(ro); err == nil || !strings.Contains(err.Error(), dir+"/ro") {
			t.Errorf("spill to a read-only file: %v, want an error naming it", err)
		}
		if _, err := p.GradSquareSum(all[0]); err != nil {
			t.Errorf("sum after a failed spill: %v", err)
		}
		// A file truncated after the spill: backward cannot read the sums back.
		f, err := os.Create(dir + "/short")
		if err != nil {
			return err
		}
		defer f.Close()
		if err := p.SpillGradSquares(f); err != nil {
			return err
		}
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := p.ForwardBackward(x.Float32, []int64{1, 4}, 2); err == nil || !strings.Contains(err.Error(), dir+"/short") {
			t.Errorf("backward with a truncated spill file: %v, want an error naming it", err)
		}
		if _, err := p.GradSquareSum(all[len(all)-1]); err == nil || !strings.Contains(err.Error(), dir+"/short") {
			t.Errorf("sum from a truncated spill file: %v, want an error naming it", err)
		}
		return nil
	})
}
