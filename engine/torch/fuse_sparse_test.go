package torch

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/injected"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// Injected models with sparse deltas (single weights and the parts of fused q/k/v
// weights, pre-transposed and behind a Transpose): the fused sparse-delta linear
// layers give the same logits, loss and gradients of every trainable tensor as the
// graph run node by node (ScatterND into zeros, Add, MatMul: dense autograd, which
// TestBackwardParity checks against PyTorch), and every weight with sparse entries is
// fused.
func TestSparseLinearFusion(t *testing.T) {
	for _, name := range []string{"tv_op17_dynamic", "tv_op13_nofold", "timm_op17", "hf_op17"} {
		t.Run(name, func(t *testing.T) {
			bothWays(t, func(t *testing.T) { sparseFusionCycle(t, name) })
		})
	}
}

// bothWays runs f with the sparse-delta linears as linear(x, W) + the op's sparse share
// and as linear(x, W + S) with the op giving only the values' gradients.
func bothWays(t *testing.T, f func(t *testing.T)) {
	saved := sparseAsWeight
	defer func() { sparseAsWeight = saved }()
	for _, asWeight := range []bool{false, true} {
		sparseAsWeight = func(int64, int64, int64, bool) bool { return asWeight }
		t.Run(map[bool]string{false: "delta", true: "weight"}[asWeight], f)
	}
}

func sparseFusionCycle(t *testing.T, name string) {
	checkSparseFusion(t, name, func(p *inject.Plan, v *surgery.ViT, rng *rand.Rand) {
		modes := []string{inject.ModeSparse, inject.ModeLoRA, inject.ModeSparse}
		injected.Cycle(p, v, modes, func(lp inject.LayerPlan, l *surgery.Linear) bool {
			return lp.Mode == inject.ModeSparse || l.Block == 0
		}, rng)
	})
}

// Every block matrix sparse and every block vector sparse too: a layer's bias is then
// inject's sparse-delta chain over it (Add(b, ScatterND(zeros, idx, v))), the fused
// step's bias a run-time value. torchvision's attention output projection is then a
// Gemm over the [out, in] weight (transB 1) with that bias: it too must be fused, and
// the gradients of the weight's and the bias's entries must equal the dense path's.
func TestSparseLinearFusionSparseBias(t *testing.T) {
	for _, name := range []string{"tv_op17_dynamic", "tv_op13_nofold", "timm_op17", "hf_op17"} {
		t.Run(name, func(t *testing.T) {
			bothWays(t, func(t *testing.T) {
				res := checkSparseFusion(t, name, func(p *inject.Plan, v *surgery.ViT, rng *rand.Rand) {
					for _, l := range v.Linears() {
						lp := injected.Layer(l, inject.ModeSparse, 0)
						injected.AddSparse(&lp, l, 9, rng)
						p.Layers = append(p.Layers, lp)
					}
					for _, vec := range v.Vectors() {
						p.Vectors = append(p.Vectors, injected.Vector(vec, inject.ModeSparse, 3, rng))
					}
					p.Recount()
				})
				if res.runtimeBias == 0 {
					t.Errorf("no fused step has a sparse-delta bias: the case is not exercised")
				}
				if res.outIn == 0 && strings.HasPrefix(name, "tv_") {
					t.Errorf("no fused step over an [out, in] weight (torchvision's out_proj Gemm)")
				}
			})
		})
	}
}

// sparseFusionResult: what checkSparseFusion saw of the fused program.
type sparseFusionResult struct {
	runtimeBias int // fused steps whose bias is computed by other steps
	outIn       int // fused steps over a weight stored [out, in]
}

// checkSparseFusion injects the plan build makes (on Allocate's linear plan without its
// layers and vectors) into fixture name, perturbs the injected tensors, and checks that
// the fused program gives the unfused one's logits, loss and gradients of every
// trainable tensor, with one fused step per weight with sparse entries.
func checkSparseFusion(t *testing.T, name string, build func(*inject.Plan, *surgery.ViT, *rand.Rand)) sparseFusionResult {
	var sres sparseFusionResult
	{
		{
			f := fixture.Load(t, fixture.Path(t, name))
			opt := inject.DefaultOptions()
			opt.Strategy = inject.Linear
			opt.Classes = 3
			p, err := inject.Allocate(f.V, f.G, nil, opt)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(5, 5))
			build(p, f.V, rng)
			weights := map[string]bool{}
			for _, l := range p.Layers {
				if len(l.Indices) > 0 {
					weights[l.Weight] = true
				}
			}
			injected.Apply(t, f.M, p, inject.ApplyOptions{Seed: 1})
			injected.Perturb(t, f.M, rand.New(rand.NewPCG(6, 6)), nil)
			names, err := meta.Trainable(f.M)
			if err != nil {
				t.Fatal(err)
			}
			images, labels, n := randomBatch(f.M, 3, 3, rng)
			type result struct {
				res   *engine.StepResult
				grads map[string][]float32
				fused int
				fills int // ConstantOfShape steps run at run time
				big   int // folded constants (not weights) over maxFoldedFill elements
			}
			run := func(noFusion bool) result {
				var out result
				onTorch(t, func() error {
					prog, err := Compile(f.M, engine.Options{Trainable: names, NoFusion: noFusion})
					if err != nil {
						return err
					}
					defer prog.Close()
					for _, s := range prog.steps {
						if strings.HasPrefix(s.op, "SparseLinear") {
							out.fused++
							if !noFusion {
								if b := s.in[2]; b >= 0 && !prog.isParam[b] {
									if !prog.isStatic[b] {
										sres.runtimeBias++
									}
								}
								if s.op == sparseOpOutIn {
									sres.outIn++
								}
							}
						}
						if s.op == "ConstantOfShape" {
							out.fills++
						}
					}
					for id, v := range prog.static {
						if v.t != nil && !prog.isParam[id] {
							if sh, err := sizeOf(v.t); err == nil && onnxio.NumElements(sh) > maxFoldedFill {
								out.big++
							}
						}
					}
					if out.res, err = prog.ForwardBackward(images, labels, n); err != nil {
						return err
					}
					out.grads = map[string][]float32{}
					for _, nm := range names {
						if out.grads[nm], err = prog.Grad(nm); err != nil {
							return err
						}
					}
					return nil
				})
				return out
			}
			fused, plain := run(false), run(true)
			if fused.fused != len(weights) {
				t.Errorf("%d sparse-delta linear steps, want one per weight with sparse entries (%d)", fused.fused, len(weights))
			}
			if plain.fused != 0 {
				t.Errorf("NoFusion compiled %d sparse-delta linear steps", plain.fused)
			}
			// Unfused, the deltas' zeros are made at run time, not held as constants.
			if plain.fills == 0 || plain.big != 0 || fused.big != 0 {
				t.Errorf("NoFusion: %d ConstantOfShape steps, %d large folded constants (fused: %d)", plain.fills, plain.big, fused.big)
			}
			if abs, rel := maxDiff(fused.res.Logits, plain.res.Logits); rel > 1e-5 {
				t.Errorf("logits: max abs %.3g, rel %.3g", abs, rel)
			}
			if d := fused.res.Loss - plain.res.Loss; d > 1e-5 || d < -1e-5 {
				t.Errorf("loss %.7g, unfused %.7g", fused.res.Loss, plain.res.Loss)
			}
			scale := 0.0 // the largest gradient norm: some (key biases) are zero but for rounding
			for _, nm := range names {
				_, nb := diffNorms(plain.grads[nm], plain.grads[nm])
				scale = max(scale, nb)
			}
			for _, nm := range names {
				if d, nb := diffNorms(fused.grads[nm], plain.grads[nm]); d > 1e-4*max(nb, 1e-3*scale) {
					t.Errorf("%s: ‖fused − unfused‖ = %.3g, ‖unfused‖ = %.3g", nm, d, nb)
				}
			}
		}
	}
	return sres
}
