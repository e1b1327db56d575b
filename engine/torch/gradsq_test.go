package torch

import (
	"testing"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/onnxio"
)

// TestSquareGradsMatchesGrads: a Program compiled with SquareGrads keeps no gradient
// and its running sums equal Σ grad² of a plain Program's gradients over the same
// batches, on a dynamic-batch graph and on a fixed-batch-2 graph run in micro-batches
// (where the square must be of the batch's summed gradient, not of each run's).
func TestSquareGradsMatchesGrads(t *testing.T) {
	for _, fx := range []string{"tv_op17_dynamic", "tv_op14_static"} {
		t.Run(fx, func(t *testing.T) {
			m, x, _ := loadFixture(t, fx)
			per := int(onnxio.NumElements(x.Shape[1:]))
			// 3 images: two batches of them, the second with other labels.
			imgs := append(append([]float32{}, x.Float32...), x.Float32[:per]...)
			labels := [][]int64{{1, 4, 7}, {9, 0, 3}}
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
				want := map[string][]float64{}
				for _, lab := range labels {
					for _, p := range []*Program{plain, sq} {
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
				}
				return nil
			})
		})
	}
}
