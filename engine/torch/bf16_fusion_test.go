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
// probabilities recomputed in backward) gives the same logits, loss and gradients of
// every initializer as the two ops it replaces (float32 softmax, autocast matmul),
// bit for bit: it runs the same kernels. Every attention softmax of the fixture is fused.
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
	if abs, _ := maxDiff(fused.res.Logits, plain.res.Logits); abs != 0 {
		t.Errorf("logits differ by %.3g", abs)
	}
	if fused.res.Loss != plain.res.Loss {
		t.Errorf("loss %.9g, unfused %.9g", fused.res.Loss, plain.res.Loss)
	}
	for _, nm := range all {
		if abs, _ := maxDiff(fused.grads[nm], plain.grads[nm]); abs != 0 {
			t.Errorf("%s: gradient differs by %.3g", nm, abs)
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
