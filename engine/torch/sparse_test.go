package torch

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/internal/npy"
)

// The sparse-delta op against PyTorch's dense autograd (train/testdata/sparse_grad.py):
// y = x·(W + D)ᵀ + b with D the dense delta holding the sparse entries, loss sum(r·y).
// The op's values and its gradients for x and for every entry must equal the dense
// ones (PyTorch's dL/dD read at the entries).
func TestSparseDeltaGradient(t *testing.T) {
	if err := exec.Command(oraclePython, "-c", "import torch, numpy").Run(); err != nil {
		t.Skipf("%s with torch is needed for the oracle: %v", oraclePython, err)
	}
	const batch, tokens, in, out = 3, 45, 24, 40
	rows := batch * tokens
	rng := rand.New(rand.NewPCG(7, 11))
	randn := func(n int) []float32 {
		v := make([]float32, n)
		for k := range v {
			v[k] = float32(rng.NormFloat64())
		}
		return v
	}
	x, w, b, r := randn(rows*in), randn(out*in), randn(out), randn(rows*out)
	// Two parts on disjoint output rows (like the q and v parts of a fused qkv
	// weight), distinct entries each, not sorted.
	pairs, vals := randomParts(rng, out, in, 17, 29)

	var gotY, gotDX []float32
	var gotDV [][]float32
	var wGrad bool
	onTorch(t, func() error {
		xt, err := tensorFromFloats(x, []int64{batch, tokens, in})
		if err != nil {
			return err
		}
		defer xt.Drop()
		if err := xt.RequiresGrad_(true); err != nil {
			return err
		}
		wt, err := tensorFromFloats(w, []int64{out, in})
		if err != nil {
			return err
		}
		defer wt.Drop()
		bt, err := tensorFromFloats(b, []int64{out})
		if err != nil {
			return err
		}
		defer bt.Drop()
		rt, err := tensorFromFloats(r, []int64{batch, tokens, out})
		if err != nil {
			return err
		}
		defer rt.Drop()
		pts, vts, dropParts, err := sparseParts(pairs, vals, true)
		if err != nil {
			return err
		}
		defer dropParts()
		y, err := ts.Linear(xt, wt, bt)
		if err != nil {
			return err
		}
		defer y.Drop()
		z, err := sparseDeltaAdd(y, xt, pts, vts, true)
		if err != nil {
			return err
		}
		defer z.Drop()
		if err := backwardOfWeightedSum(z, rt); err != nil {
			return err
		}
		zd, err := z.Detach(false)
		if err != nil {
			return err
		}
		defer zd.Drop()
		if gotY, err = copyFloats(zd); err != nil {
			return err
		}
		g, err := xt.Grad(false)
		if err != nil {
			return err
		}
		defer g.Drop()
		if gotDX, err = copyFloats(g); err != nil {
			return err
		}
		for _, vt := range vts {
			g, err := vt.Grad(false)
			if err != nil {
				return err
			}
			defer g.Drop()
			d, err := copyFloats(g)
			if err != nil {
				return err
			}
			gotDV = append(gotDV, d)
		}
		wg, err := wt.Grad(false)
		if err != nil {
			return err
		}
		defer wg.Drop()
		wGrad, err = wg.Defined()
		return err
	})

	dir := t.TempDir()
	save := func(name string, a *npy.Array) {
		if err := npy.Write(filepath.Join(dir, name), a); err != nil {
			t.Fatal(err)
		}
	}
	save("x.npy", &npy.Array{Shape: []int64{batch, tokens, in}, Float32: x})
	save("w.npy", &npy.Array{Shape: []int64{out, in}, Float32: w})
	save("b.npy", &npy.Array{Shape: []int64{out}, Float32: b})
	save("r.npy", &npy.Array{Shape: []int64{batch, tokens, out}, Float32: r})
	for p := range pairs {
		n := int64(len(vals[p]))
		save(fmt.Sprintf("pairs%d.npy", p), &npy.Array{Shape: []int64{n, 2}, Int64: pairs[p]})
		save(fmt.Sprintf("v%d.npy", p), &npy.Array{Shape: []int64{n}, Float32: vals[p]})
	}
	if o, err := exec.Command(oraclePython, filepath.Join("testdata", "sparse_grad.py"), dir).CombinedOutput(); err != nil {
		t.Fatalf("sparse_grad.py: %v\n%s", err, o)
	}
	read := func(name string) []float32 {
		a, err := npy.Read(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return a.Float32
	}
	check := func(what string, got, want []float32) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d values, PyTorch %d", what, len(got), len(want))
		}
		if d, n := diffNorms(got, want); d > 1e-5*n {
			t.Errorf("%s: ‖got − PyTorch‖ = %.3g, ‖PyTorch‖ = %.3g", what, d, n)
		}
	}
	check("y", gotY, read("y.npy"))
	check("dL/dx", gotDX, read("dx.npy"))
	for p := range pairs {
		check(fmt.Sprintf("dL/dv part %d", p), gotDV[p], read(fmt.Sprintf("dv%d.npy", p)))
	}
	if wGrad {
		t.Error("the frozen weight got a gradient")
	}
}

// BenchmarkSparseDelta: the sparse-delta op's forward and backward (x and entry
// gradients) on one vit_b_16 layer's shapes: 8 images of 197 tokens, a fused q/k/v
// weight [2304, 768] with 20,000 entries in two parts (the count an SPT plan at ~0.4M
// gives its sparse matrices). The dense product beside it is not included.
func BenchmarkSparseDelta(b *testing.B) {
	const rows, in, out, n = 8 * 197, 768, 2304, 20000
	rng := rand.New(rand.NewPCG(1, 2))
	x, y, r := benchLayer(b, rng, rows, in, out, false)
	var pts, vts []*ts.Tensor
	onTorch(b, func() error {
		for p := 0; p < 2; p++ {
			pr := make([]int64, 0, n)
			for k := 0; k < n/2; k++ {
				pr = append(pr, int64(p*out/2+rng.IntN(out/2)), int64(rng.IntN(in)))
			}
			pt, err := tensorFromInt64s(pr, []int64{n / 2, 2})
			if err != nil {
				return err
			}
			vt, err := tensorFromFloats(normals(rng, n/2), []int64{n / 2})
			if err != nil {
				return err
			}
			if err := vt.RequiresGrad_(true); err != nil {
				return err
			}
			pts, vts = append(pts, pt), append(vts, vt)
		}
		return nil
	})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		onTorch(b, func() error {
			// The op adds into y in place and makes it its output: a fresh handle per
			// iteration, without the last one's history (the values accumulate, which
			// the timing does not mind).
			yi, err := y.Detach(false)
			if err != nil {
				return err
			}
			defer yi.Drop()
			z, err := sparseDeltaAdd(yi, x, pts, vts, true)
			if err != nil {
				return err
			}
			defer z.Drop()
			return backwardOfWeightedSum(z, r)
		})
	}
}

// backwardOfWeightedSum runs the backward of the loss sum(z ⊙ r): the gradient that
// reaches z is r, a fixed random direction the PyTorch oracle uses too.
func backwardOfWeightedSum(z, r *ts.Tensor) error {
	prod, err := z.Mul(r, false)
	if err != nil {
		return err
	}
	defer prod.Drop()
	loss, err := prod.Sum(z.DType(), false)
	if err != nil {
		return err
	}
	defer loss.Drop()
	return loss.Backward()
}

// Under bf16 autocast the op reads and writes bfloat16 x, y, output gradient and ∂/∂x
// where they are (sparse.cpp: no float32 copies). Oracle: the op on the same values as
// float32 (checked against PyTorch above): its y and ∂/∂x rounded to bfloat16 must be
// the bfloat16 run's, bit for bit, and the values' gradients equal; for x in float32
// (a LayerNorm's output) with a bfloat16 y, ∂/∂x and the values' gradients equal the
// float32 run's.
func TestSparseDeltaBF16SameAsFloat32(t *testing.T) {
	const rows, in, out = 150, 40, 24 // 3 tiles, the last partial
	rng := rand.New(rand.NewPCG(3, 5))
	randn := func(n int) []float32 {
		v := make([]float32, n)
		for k := range v {
			v[k] = float32(rng.NormFloat64())
		}
		return v
	}
	x, y, r := randn(rows*in), randn(rows*out), randn(rows*out)
	pairs, vals := randomParts(rng, out, in, 13, 21)
	type result struct {
		y, dx []float32
		dv    [][]float32
	}
	// run runs the op with x, y and r in the given dtypes (the bfloat16 ones rounded
	// from the float32 values) and returns y, ∂/∂x and ∂/∂v as float32; roundX, roundY:
	// x, or y and r, rounded to bfloat16 and back first (the float32 oracle on the same
	// values).
	run := func(xType, yType gotch.DType, roundX, roundY bool) (res result) {
		onTorch(t, func() error {
			mk := func(v []float32, shape []int64, dt gotch.DType, round bool) (*ts.Tensor, error) {
				f, err := tensorFromFloats(v, shape)
				if err != nil {
					return nil, err
				}
				if round {
					b, err := f.Totype(gotch.BFloat16, true)
					if err != nil {
						return nil, err
					}
					f, err = b.Totype(gotch.Float, true)
					if err != nil {
						return nil, err
					}
				}
				if dt == gotch.Float {
					return f, nil
				}
				return f.Totype(dt, true)
			}
			xt, err := mk(x, []int64{rows / 2, 2, in}, xType, roundX)
			if err != nil {
				return err
			}
			defer xt.Drop()
			if err := xt.RequiresGrad_(true); err != nil {
				return err
			}
			yt, err := mk(y, []int64{rows, out}, yType, roundY)
			if err != nil {
				return err
			}
			defer yt.Drop()
			rt, err := mk(r, []int64{rows, out}, yType, roundY)
			if err != nil {
				return err
			}
			defer rt.Drop()
			pts, vts, dropParts, err := sparseParts(pairs, vals, true)
			if err != nil {
				return err
			}
			defer dropParts()
			x2, err := xt.Reshape([]int64{rows, in}, false)
			if err != nil {
				return err
			}
			defer x2.Drop()
			z, err := sparseDeltaAdd(yt, x2, pts, vts, true)
			if err != nil {
				return err
			}
			defer z.Drop()
			if z.DType() != yType {
				return fmt.Errorf("output %v, want y's %v", z.DType(), yType)
			}
			if err := backwardOfWeightedSum(z, rt); err != nil {
				return err
			}
			if res.y, err = floatsOf(z); err != nil {
				return err
			}
			g, err := xt.Grad(false)
			if err != nil {
				return err
			}
			defer g.Drop()
			if g.DType() != xType {
				return fmt.Errorf("∂/∂x %v, want x's %v", g.DType(), xType)
			}
			if res.dx, err = floatsOf(g); err != nil {
				return err
			}
			for _, vt := range vts {
				g, err := vt.Grad(false)
				if err != nil {
					return err
				}
				defer g.Drop()
				d, err := copyFloats(g)
				if err != nil {
					return err
				}
				res.dv = append(res.dv, d)
			}
			return nil
		})
		return res
	}
	toBF16 := func(v []float32) []float32 { // round to nearest even, as libtorch does
		o := make([]float32, len(v))
		for k, f := range v {
			o[k] = bf16Round(float64(f))
		}
		return o
	}
	same := func(what string, got, want []float32) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
		}
		for k := range got {
			if math.Float32bits(got[k]) != math.Float32bits(want[k]) {
				t.Errorf("%s[%d] = %g, float32 oracle %g", what, k, got[k], want[k])
				return
			}
		}
	}
	oracle := run(gotch.Float, gotch.Float, true, true)
	bf := run(gotch.BFloat16, gotch.BFloat16, false, false)
	same("y (bf16 x, y)", bf.y, toBF16(oracle.y))
	same("dL/dx (bf16 x, y)", bf.dx, toBF16(oracle.dx))
	for p := range pairs {
		same(fmt.Sprintf("dL/dv part %d (bf16 x, y)", p), bf.dv[p], oracle.dv[p])
	}
	// x float32 (a LayerNorm's output), y bfloat16: the oracle rounds only y and r.
	oracle = run(gotch.Float, gotch.Float, false, true)
	mixed := run(gotch.Float, gotch.BFloat16, false, false)
	same("y (f32 x, bf16 y)", mixed.y, toBF16(oracle.y))
	same("dL/dx (f32 x, bf16 y)", mixed.dx, oracle.dx)
	for p := range pairs {
		same(fmt.Sprintf("dL/dv part %d (f32 x, bf16 y)", p), mixed.dv[p], oracle.dv[p])
	}
}

// sparseParts makes the index tensors [n, 2] and value tensors [n] of a sparse
// delta's parts (values requiring gradients if grad); drop frees them all.
func sparseParts(pairs [][]int64, vals [][]float32, grad bool) (pts, vts []*ts.Tensor, drop func(), err error) {
	drop = func() {
		for _, t := range append(pts, vts...) {
			t.Drop()
		}
	}
	for p := range pairs {
		pt, err := tensorFromInt64s(pairs[p], []int64{int64(len(vals[p])), 2})
		if err != nil {
			drop()
			return nil, nil, nil, err
		}
		pts = append(pts, pt)
		vt, err := tensorFromFloats(vals[p], []int64{int64(len(vals[p]))})
		if err != nil {
			drop()
			return nil, nil, nil, err
		}
		vts = append(vts, vt)
		if grad {
			if err := vt.RequiresGrad_(true); err != nil {
				drop()
				return nil, nil, nil, err
			}
		}
	}
	return pts, vts, drop, nil
}

// randomParts makes one sparse part per size, part p's entries distinct and on output
// rows [p·out/2, (p+1)·out/2) (disjoint, like the q and v parts of a fused qkv
// weight), not sorted, with standard normal values.
func randomParts(rng *rand.Rand, out, in int, sizes ...int) (pairs [][]int64, vals [][]float32) {
	for p, n := range sizes {
		seen := map[[2]int64]bool{}
		var pr []int64
		for len(pr) < 2*n {
			e := [2]int64{int64(p*out/2 + rng.IntN(out/2)), int64(rng.IntN(in))}
			if !seen[e] {
				seen[e] = true
				pr = append(pr, e[0], e[1])
			}
		}
		v := make([]float32, n)
		for k := range v {
			v[k] = float32(rng.NormFloat64())
		}
		pairs, vals = append(pairs, pr), append(vals, v)
	}
	return pairs, vals
}

// BenchmarkSparseLinear: one vit_b_16 layer with a sparse delta as the executor runs
// it, forward and backward (x, entries), in fp32 and under bf16 autocast, both ways:
// "add" is linear(x, W) plus the op adding S·x (and its share of ∂/∂x), "weight" is
// linear(x, W + S) with W + S made per step (sparseWeight) and the op giving only the
// entries' gradients; "dense" is linear(x, W) alone, the cost without the delta. 8
// images of 197 tokens, q/k/v weight [2304, 768], 450 entries (an SPT plan at ~0.4M
// gives its 40 sparse matrices ~18,000).
func BenchmarkSparseLinear(b *testing.B) {
	const rows, in, out, n = 8 * 197, 768, 2304, 450
	rng := rand.New(rand.NewPCG(3, 4))
	x, w, r := benchLayer(b, rng, rows, in, out, true)
	var pt, vt *ts.Tensor
	onTorch(b, func() error {
		var err error
		pr := make([]int64, 0, 2*n)
		for k := 0; k < n; k++ {
			pr = append(pr, int64(rng.IntN(out)), int64(rng.IntN(in)))
		}
		if pt, err = tensorFromInt64s(pr, []int64{n, 2}); err != nil {
			return err
		}
		if vt, err = tensorFromFloats(normals(rng, n), []int64{n}); err != nil {
			return err
		}
		return vt.RequiresGrad_(true)
	})
	for _, bf16 := range []bool{false, true} {
		for _, way := range []string{"dense", "add", "weight"} {
			asWeight := way == "weight"
			b.Run(map[bool]string{false: "fp32", true: "bf16"}[bf16]+"/"+way, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					onTorch(b, func() error {
						if bf16 {
							was, err := autocastEnter()
							if err != nil {
								return err
							}
							defer autocastExit(was)
						}
						wi, xi := w, x
						if asWeight {
							weff, err := sparseWeight(w, []*ts.Tensor{pt}, []*ts.Tensor{vt})
							if err != nil {
								return err
							}
							defer weff.Drop()
							xd, err := x.Detach(false)
							if err != nil {
								return err
							}
							defer xd.Drop()
							wi, xi = weff, xd
						}
						y, err := ts.Linear(x, wi, new(ts.Tensor))
						if err != nil {
							return err
						}
						defer y.Drop()
						if way == "dense" {
							return backwardOfWeightedSum(y, r)
						}
						z, err := sparseDeltaAdd(y, xi, []*ts.Tensor{pt}, []*ts.Tensor{vt}, !asWeight)
						if err != nil {
							return err
						}
						defer z.Drop()
						return backwardOfWeightedSum(z, r)
					})
				}
			})
		}
	}
}

// benchLayer makes a benchmark's layer tensors, normal random: x [rows, in] (with a
// gradient), m (the other operand: the weight [out, in] if weight, else a linear's
// output [rows, out]) and r [rows, out] (the backward's direction).
func benchLayer(b *testing.B, rng *rand.Rand, rows, in, out int64, weight bool) (x, m, r *ts.Tensor) {
	mShape := []int64{rows, out}
	if weight {
		mShape = []int64{out, in}
	}
	randn := func(k int64) []float32 { return normals(rng, k) }
	onTorch(b, func() error {
		var err error
		if x, err = tensorFromFloats(randn(rows*in), []int64{rows, in}); err != nil {
			return err
		}
		if err := x.RequiresGrad_(true); err != nil {
			return err
		}
		if m, err = tensorFromFloats(randn(mShape[0]*mShape[1]), mShape); err != nil {
			return err
		}
		r, err = tensorFromFloats(randn(rows*out), []int64{rows, out})
		return err
	})
	return x, m, r
}

// normals returns k standard normal float32 draws.
func normals(rng *rand.Rand, k int64) []float32 {
	v := make([]float32, k)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// floatsOf copies a tensor's values (detached, as float32) into Go memory.
func floatsOf(t *ts.Tensor) ([]float32, error) {
	d, err := t.Detach(false)
	if err != nil {
		return nil, err
	}
	defer d.Drop()
	f, err := d.Totype(gotch.Float, false)
	if err != nil {
		return nil, err
	}
	defer f.Drop()
	return copyFloats(f)
}
