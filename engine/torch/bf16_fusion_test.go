package torch

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/injected"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// randomBatch is n random images for m's input and labels k mod classes.
func randomBatch(m *onnxpb.ModelProto, n, classes int, rng *rand.Rand) ([]float32, []int64, int) {
	in := m.GetGraph().GetInput()[0].GetType().GetTensorType().GetShape().GetDim()
	if d := in[0].GetDimValue(); d > 0 {
		n = int(d)
	}
	per := 1
	for _, d := range in[1:] {
		per *= int(d.GetDimValue())
	}
	images := make([]float32, n*per)
	for k := range images {
		images[k] = float32(rng.NormFloat64())
	}
	labels := make([]int64, n)
	for k := range labels {
		labels[k] = int64(k % classes)
	}
	return images, labels, n
}

type stepOut struct {
	res   *engine.StepResult
	grads map[string][]float32
	ops   map[string]int // steps by op (fused steps by their op's first word)
	bare  int            // MatMul steps over a weight (linear layers left unfused)
}

// stepOnce compiles m with opt and runs one forward+backward on the batch.
func stepOnce(t *testing.T, m *onnxpb.ModelProto, opt engine.Options, images []float32, labels []int64, n int) stepOut {
	var out stepOut
	onTorch(t, func() error {
		prog, err := Compile(m, opt)
		if err != nil {
			return err
		}
		defer prog.Close()
		out.ops = map[string]int{}
		for _, s := range prog.steps {
			out.ops[strings.SplitN(s.op, "(", 2)[0]]++
			if s.op == "MatMul" && len(s.in) == 2 && s.in[1] >= 0 && prog.isParam[s.in[1]] {
				out.bare++
			}
		}
		if out.res, err = prog.ForwardBackward(images, labels, n); err != nil {
			return err
		}
		out.grads = map[string][]float32{}
		for _, nm := range opt.Trainable {
			if out.grads[nm], err = prog.Grad(nm); err != nil {
				return err
			}
		}
		return nil
	})
	return out
}

// Under bf16 autocast the fused Softmax → MatMul (attn.cpp: the scores kept, the
// probabilities recomputed in backward) gives the logits, loss and gradients of every
// initializer of the two ops it replaces (float32 softmax, autocast matmul) to within
// bfloat16's resolution: both compute the softmax in float32 and round the
// probabilities to bfloat16, but with different exp implementations, which now and
// then round a probability to the neighbouring bfloat16 (TestSoftmaxRowKernel checks
// the kernel itself tightly). Every attention softmax of the fixture is fused.
func TestSoftmaxMatMulFusionSameAsTwoOps(t *testing.T) {
	m, _, _ := loadFixture(t, "tv_op17_dynamic")
	images, labels, n := randomBatch(m, 4, 5, rand.New(rand.NewPCG(7, 7)))
	var all []string
	onTorch(t, func() (err error) { all, err = allParams(m); return err })
	opt := engine.Options{Trainable: all, Precision: engine.BF16}
	fused := stepOnce(t, m, opt, images, labels, n)
	noAttnFusion = true
	plain := stepOnce(t, m, opt, images, labels, n)
	noAttnFusion = false
	if fused.ops["SoftmaxMatMul"] == 0 || fused.ops["Softmax"] != 0 {
		t.Errorf("fused: %d SoftmaxMatMul steps, %d Softmax steps left; want every softmax fused", fused.ops["SoftmaxMatMul"], fused.ops["Softmax"])
	}
	if plain.ops["SoftmaxMatMul"] != 0 || plain.ops["Softmax"] != fused.ops["SoftmaxMatMul"] {
		t.Errorf("unfused: %d SoftmaxMatMul, %d Softmax steps", plain.ops["SoftmaxMatMul"], plain.ops["Softmax"])
	}
	const tol = 1.0 / 64 // a few bfloat16 units (2^-8 relative each), of the largest value
	if _, rel := maxDiff(fused.res.Logits, plain.res.Logits); rel > tol {
		t.Errorf("logits differ by %.3g of the largest", rel)
	}
	if d := math.Abs(fused.res.Loss - plain.res.Loss); d > tol*math.Abs(plain.res.Loss) {
		t.Errorf("loss %.9g, unfused %.9g", fused.res.Loss, plain.res.Loss)
	}
	for _, nm := range all {
		if _, rel := maxDiff(fused.grads[nm], plain.grads[nm]); rel > tol {
			t.Errorf("%s: gradient differs by %.3g of its largest entry", nm, rel)
		}
	}
	// fp32: no fusion (the two ops share one float32 tensor).
	if f32 := stepOnce(t, m, engine.Options{Trainable: all}, images, labels, n); f32.ops["SoftmaxMatMul"] != 0 {
		t.Errorf("fp32 compiled %d SoftmaxMatMul steps", f32.ops["SoftmaxMatMul"])
	}
}

// Linear layers whose bias is computed (vectors with sparse or whole trainable
// entries, which inject writes as ScatterND adds and, for a fused q/k/v bias, a Concat)
// are fused like those with an initializer bias: no MatMul over a weight is left, and
// in fp32 the logits, loss and every trainable tensor's gradient match the graph run
// node by node.
func TestComputedBiasLinearFused(t *testing.T) {
	f := fixture.Load(t, fixture.Path(t, "tv_op17_dynamic"))
	opt := inject.DefaultOptions()
	opt.Strategy = inject.Linear
	opt.Classes = 3
	p, err := inject.Allocate(f.V, f.G, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(8, 8))
	modes := []string{inject.ModeSparse, inject.ModeLoRA, inject.ModeSparse}
	injected.Cycle(p, f.V, modes, func(lp inject.LayerPlan, l *surgery.Linear) bool {
		return lp.Mode == inject.ModeSparse || l.Block == 0
	}, rng)
	have := map[string]bool{}
	for _, v := range p.Vectors {
		have[v.Name] = true
	}
	biases := 0
	for k, vec := range f.V.Vectors() {
		if !strings.HasSuffix(vec.Name, ".bias") || have[vec.Name] {
			continue
		}
		vp := inject.VectorPlan{Name: vec.Name, Block: vec.Block, Init: vec.Init, Offset: vec.Offset, Size: vec.Size, Mode: inject.ModeFull, Params: int64(vec.Size)}
		if k%2 == 0 {
			vp.Mode, vp.Indices = inject.ModeSparse, []int64{int64(vec.Offset + 1), int64(vec.Offset + vec.Size - 1)}
			vp.Params = 2
		}
		p.Vectors = append(p.Vectors, vp)
		biases++
	}
	if biases == 0 {
		t.Fatal("no bias vectors in the fixture")
	}
	p.Recount()
	injected.Apply(t, f.M, p, inject.ApplyOptions{Seed: 1})
	injected.Perturb(t, f.M, rand.New(rand.NewPCG(9, 9)), nil)
	names, err := meta.Trainable(f.M)
	if err != nil {
		t.Fatal(err)
	}
	images, labels, n := randomBatch(f.M, 3, 3, rng)
	fused := stepOnce(t, f.M, engine.Options{Trainable: names}, images, labels, n)
	plain := stepOnce(t, f.M, engine.Options{Trainable: names, NoFusion: true}, images, labels, n)
	if fused.bare != 0 {
		t.Errorf("%d linear layers left as MatMul (of %d unfused)", fused.bare, plain.bare)
	}
	if abs, rel := maxDiff(fused.res.Logits, plain.res.Logits); rel > 1e-5 {
		t.Errorf("logits: max abs %.3g, rel %.3g", abs, rel)
	}
	if d := fused.res.Loss - plain.res.Loss; d > 1e-5 || d < -1e-5 {
		t.Errorf("loss %.7g, unfused %.7g", fused.res.Loss, plain.res.Loss)
	}
	scale := 0.0
	for _, nm := range names {
		_, nb := diffNorms(plain.grads[nm], plain.grads[nm])
		scale = max(scale, nb)
	}
	for _, nm := range names {
		if d, nb := diffNorms(fused.grads[nm], plain.grads[nm]); d > 1e-4*max(nb, 1e-3*scale) {
			t.Errorf("%s: ‖fused − unfused‖ = %.3g, ‖unfused‖ = %.3g", nm, d, nb)
		}
	}
	// bf16 compiles and runs with the computed biases fused too.
	if b := stepOnce(t, f.M, engine.Options{Trainable: names, Precision: engine.BF16}, images, labels, n); b.bare != 0 {
		t.Errorf("bf16: %d linear layers left as MatMul", b.bare)
	}
}

// BenchmarkSoftmaxMatMul: one vit_b_16 attention layer's softmax → probabilities ×
// values (8 images, 12 heads, 197 tokens, head size 64) under bf16 autocast, forward
// and backward to the bfloat16 scores and values: "fused" is the executor's op,
// "twoops" softmax in float32 then the autocast product (the graph run node by node),
// "pytorch" the reference the issue compares with, PyTorch autocast's way: softmax on
// the bfloat16 scores, bfloat16 probabilities.
func BenchmarkSoftmaxMatMul(b *testing.B) {
	const bh, t, d = 8 * 12, 197, 64
	rng := rand.New(rand.NewPCG(5, 6))
	var x, v, r *ts.Tensor
	onTorch(b, func() error {
		leaf := func(n []int64, scale float32) (*ts.Tensor, error) {
			vals := normals(rng, n[0]*n[1]*n[2])
			for k := range vals {
				vals[k] *= scale
			}
			f, err := tensorFromFloats(vals, n)
			if err != nil {
				return nil, err
			}
			h, err := f.Totype(gotch.BFloat16, true)
			if err != nil {
				return nil, err
			}
			return h, h.RequiresGrad_(true)
		}
		var err error
		if x, err = leaf([]int64{bh, t, t}, 3); err != nil {
			return err
		}
		if v, err = leaf([]int64{bh, t, d}, 1); err != nil {
			return err
		}
		r, err = tensorFromFloats(normals(rng, bh*t*d), []int64{bh, t, d})
		return err
	})
	for _, way := range []string{"fused", "twoops", "pytorch"} {
		b.Run(way, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				onTorch(b, func() error {
					was, err := autocastEnter()
					if err != nil {
						return err
					}
					defer autocastExit(was)
					var y *ts.Tensor
					switch way {
					case "fused":
						y, err = softmaxMatMul(x, v)
					default:
						in := x
						if way == "twoops" {
							if in, err = x.Totype(gotch.Float, false); err != nil {
								return err
							}
							defer in.Drop()
						}
						p, err := in.Softmax(-1, gotch.Invalid, false)
						if err != nil {
							return err
						}
						defer p.Drop()
						y, err = p.Matmul(v, false)
					}
					if err != nil {
						return err
					}
					defer y.Drop()
					if err := backwardOfWeightedSum(y, r); err != nil {
						return err
					}
					for _, l := range []*ts.Tensor{x, v} {
						g, err := l.Grad(false)
						if err != nil {
							return err
						}
						if err := g.Zero_(); err != nil {
							return err
						}
						g.Drop()
					}
					return nil
				})
			}
		})
	}
}

// The softmax kernel of the fused op, AVX-512 and plain loops, on rows of widths that
// leave every tail length (and vit_b_16's 197), scores in float32 and bfloat16, against
// float64 arithmetic in Go: the bfloat16 probabilities are the exact softmax rounded to
// nearest (a rare one, where the float32 exp's error crosses a rounding boundary, one
// unit off), and the backward's gx = p ⊙ (gp − Σ gp ⊙ p) within float32 arithmetic's
// error plus the rounding to x's dtype.
func TestSoftmaxRowKernel(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int64{1, 5, 16, 17, 31, 197} {
		const rows = 40
		x32 := normals(rng, rows*n)
		for k := range x32 {
			x32[k] *= 4 // rows from flat to peaked
			if k/int(n) == 0 {
				x32[k] *= 20 // one row with a range past float32's exp underflow
			}
		}
		g32 := normals(rng, rows*n)
		for _, dt := range []gotch.DType{gotch.Float, gotch.BFloat16} {
			for _, plain := range []bool{false, true} {
				name := fmt.Sprintf("n%d/%v/plain=%v", n, dt, plain)
				var xs, gs, ps, gxs []float32
				onTorch(t, func() error {
					xf, err := tensorFromFloats(x32, []int64{rows, n})
					if err != nil {
						return err
					}
					defer xf.Drop()
					x, err := xf.Totype(dt, false)
					if err != nil {
						return err
					}
					defer x.Drop()
					gf, err := tensorFromFloats(g32, []int64{rows, n})
					if err != nil {
						return err
					}
					defer gf.Drop()
					g, err := gf.Totype(gotch.BFloat16, false)
					if err != nil {
						return err
					}
					defer g.Drop()
					p, gx, err := softmaxRowsKernel(x, g, plain)
					if err != nil {
						return err
					}
					defer p.Drop()
					defer gx.Drop()
					p1, _, err := softmaxRowsKernel(x, nil, plain)
					if err != nil {
						return err
					}
					defer p1.Drop()
					if gx.DType() != dt || p.DType() != gotch.BFloat16 {
						return fmt.Errorf("p %v, gx %v; want bfloat16, %v", p.DType(), gx.DType(), dt)
					}
					for _, c := range []struct {
						t   *ts.Tensor
						dst *[]float32
					}{{x, &xs}, {g, &gs}, {p, &ps}, {gx, &gxs}} {
						var err error
						if *c.dst, err = floatsOf(c.t); err != nil {
							return err
						}
					}
					pf, err := floatsOf(p1)
					if err != nil {
						return err
					}
					if !slices.Equal(pf, ps) {
						return fmt.Errorf("forward's probabilities differ from backward's recomputed ones")
					}
					return nil
				})
				offByOne := 0
				for r := 0; r < rows; r++ {
					row := func(v []float32) []float32 { return v[r*int(n) : (r+1)*int(n)] }
					x, g, p, gx := row(xs), row(gs), row(ps), row(gxs)
					m := math.Inf(-1)
					for _, v := range x {
						m = math.Max(m, float64(v))
					}
					e := make([]float64, n)
					var s float64
					for j, v := range x {
						e[j] = math.Exp(float64(v) - m)
						s += e[j]
					}
					var dot float64
					for j := range e {
						e[j] /= s
						dot += e[j] * float64(g[j])
					}
					for j := range e {
						want := bf16Round(e[j])
						if e[j] < 1e-30 {
							// Past float32's exp range the kernel's e^-87 floor (or an
							// underflow to 0) stands for 0.
							if p[j] > 1e-30 {
								t.Fatalf("%s: row %d p[%d] = %g, want ~0 (%g)", name, r, j, p[j], e[j])
							}
						} else if p[j] != want {
							if math.Abs(float64(p[j])-e[j]) > e[j]/128 {
								t.Fatalf("%s: row %d p[%d] = %g, want %g (bfloat16 of %g)", name, r, j, p[j], want, e[j])
							}
							offByOne++
						}
						wantGx := e[j] * (float64(g[j]) - dot)
						tol := 1e-6 * e[j] * (math.Abs(float64(g[j])) + math.Abs(dot))
						if dt == gotch.BFloat16 {
							tol += math.Abs(wantGx) / 256
						} else {
							tol += math.Abs(wantGx) * 1e-6
						}
						if math.Abs(float64(gx[j])-wantGx) > tol+1e-37 {
							t.Fatalf("%s: row %d gx[%d] = %g, want %g (±%.2g)", name, r, j, gx[j], wantGx, tol)
						}
					}
				}
				if total := rows * int(n); offByOne*1000 > total {
					t.Errorf("%s: %d of %d probabilities one bfloat16 unit off the exact ones' rounding", name, offByOne, total)
				}
			}
		}
	}
}

// bf16Round is v rounded to the nearest bfloat16 (ties to even), as float32.
func bf16Round(v float64) float32 {
	b := math.Float32bits(float32(v))
	b += 0x7fff + (b>>16)&1
	return math.Float32frombits(b &^ 0xffff)
}
