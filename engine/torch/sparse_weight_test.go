package torch

import (
	"math/rand/v2"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// sparseWeight (W + S for a small frozen sparse-delta linear) against W + S summed in
// Go: in float32 without autocast, and under bf16 autocast in bfloat16 with the values
// of libtorch's cast of that float32 sum (what autocast made of the float32 W + S the
// linear was given before), bit for bit. W is given as stored [out, in] and as the
// transposed view of a stored [in, out] (the fused step's two layouts).
func TestSparseWeightSameAsDenseSum(t *testing.T) {
	const out, in = 24, 40
	rng := rand.New(rand.NewPCG(3, 4))
	w := make([]float32, out*in) // [out, in]
	for k := range w {
		w[k] = float32(rng.NormFloat64())
	}
	// Two parts, distinct entries, not sorted; values a tenth of W's scale, so that in
	// bfloat16 W + v rounds once (not W and v each).
	var pairs [][]int64
	var vals [][]float32
	dense := append([]float32(nil), w...)
	seen := map[[2]int64]bool{}
	for _, n := range []int{13, 21} {
		var pr []int64
		var v []float32
		for len(v) < n {
			e := [2]int64{int64(rng.IntN(out)), int64(rng.IntN(in))}
			if seen[e] {
				continue
			}
			seen[e] = true
			x := float32(rng.NormFloat64() * 0.1)
			pr, v = append(pr, e[0], e[1]), append(v, x)
			dense[e[0]*in+e[1]] += x
		}
		pairs, vals = append(pairs, pr), append(vals, v)
	}
	wT := make([]float32, in*out) // the same weight stored [in, out]
	for o := 0; o < out; o++ {
		for i := 0; i < in; i++ {
			wT[i*out+o] = w[o*in+i]
		}
	}
	for _, bf16 := range []bool{false, true} {
		for _, transposed := range []bool{false, true} {
			var got, want []float32
			var dtype gotch.DType
			onTorch(t, func() error {
				var wt *ts.Tensor
				var err error
				if transposed {
					s, err := tensorFromFloats(wT, []int64{in, out})
					if err != nil {
						return err
					}
					defer s.Drop()
					if wt, err = s.Transpose(0, 1, false); err != nil {
						return err
					}
				} else if wt, err = tensorFromFloats(w, []int64{out, in}); err != nil {
					return err
				}
				defer wt.Drop()
				pts, vts, dropParts, err := sparseParts(pairs, vals, false)
				if err != nil {
					return err
				}
				defer dropParts()
				if bf16 {
					was, err := autocastEnter()
					if err != nil {
						return err
					}
					defer autocastExit(was)
				}
				weff, err := sparseWeight(wt, pts, vts)
				if err != nil {
					return err
				}
				defer weff.Drop()
				dtype = weff.DType()
				if got, err = floatsOf(weff); err != nil {
					return err
				}
				d, err := tensorFromFloats(dense, []int64{out, in})
				if err != nil {
					return err
				}
				defer d.Drop()
				if bf16 { // the oracle: libtorch's bfloat16 cast of the float32 sum
					b, err := d.Totype(gotch.BFloat16, false)
					if err != nil {
						return err
					}
					defer b.Drop()
					want, err = floatsOf(b)
					return err
				}
				want, err = copyFloats(d)
				return err
			})
			wantType := map[bool]gotch.DType{false: gotch.Float, true: gotch.BFloat16}[bf16]
			if dtype != wantType {
				t.Errorf("bf16 %v, transposed %v: dtype %v, want %v", bf16, transposed, dtype, wantType)
			}
			if len(got) != len(want) {
				t.Fatalf("bf16 %v, transposed %v: %d values, want %d", bf16, transposed, len(got), len(want))
			}
			diff := 0
			for k := range want {
				if got[k] != want[k] {
					diff++
				}
			}
			if diff != 0 {
				t.Errorf("bf16 %v, transposed %v: %d of %d values differ from the dense sum", bf16, transposed, diff, len(want))
			}
		}
	}
}
