package torch

import (
	"fmt"
	"github.com/sptctl/sptctl/engine"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sugarme/gotch/ts"
	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// All torch work in these tests runs on one shared Worker (a goroutine locked to its
// OS thread).

var (
	testWorkerOnce sync.Once
	testWorker     *Worker
)

func onTorch(t testing.TB, f func() error) {
	t.Helper()
	testWorkerOnce.Do(func() { testWorker = NewWorker() })
	if err := testWorker.Do(f); err != nil {
		t.Fatal(err)
	}
}

// allParams names every parameter of m, as a first compile learns them, for tests
// that then compile m with all of them trainable. Call it inside onTorch.
func allParams(m *onnxpb.ModelProto) ([]string, error) {
	probe, err := Compile(m, engine.Options{})
	if err != nil {
		return nil, err
	}
	defer probe.Close()
	return probe.Params(), nil
}

const fixtureDir = "../../testdata"

func fixtureNames(t testing.TB) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(fixtureDir, "*.onnx"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fixtures in %s (%v)", fixtureDir, err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".onnx"))
	}
	sort.Strings(names)
	return names
}

func loadFixture(t testing.TB, name string) (*onnxpb.ModelProto, *npy.Array, *npy.Array) {
	t.Helper()
	m, err := onnxio.Load(filepath.Join(fixtureDir, name+".onnx"))
	if err != nil {
		t.Fatal(err)
	}
	x, err := npy.Read(filepath.Join(fixtureDir, name+".input.npy"))
	if err != nil {
		t.Fatal(err)
	}
	y, err := npy.Read(filepath.Join(fixtureDir, name+".output.npy"))
	if err != nil {
		t.Fatal(err)
	}
	return m, x, y
}

// maxDiff returns max |a-b| and that over max |b|.
func maxDiff(a, b []float32) (abs, rel float64) {
	return fixture.MaxAbsDiff(a, b), fixture.RelDiff(a, b)
}

// runEval runs p in eval mode on x and returns the first output's values and shape.
func runEval(p *Program, x []float32, shape []int64) ([]float32, []int64, error) {
	xt, err := tensorFromFloats(x, shape)
	if err != nil {
		return nil, nil, err
	}
	defer xt.Drop()
	outs, err := p.run(map[string]*ts.Tensor{p.Inputs()[0].Name: xt}, false)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		for _, o := range outs {
			o.Drop()
		}
	}()
	o := outs[p.Outputs()[0].Name]
	s, err := sizeOf(o)
	if err != nil {
		return nil, nil, err
	}
	v, err := copyFloats(o)
	return v, s, err
}

// TestForwardParity: every fixture, eval mode, against PyTorch's output, with the
// exporter's node chains fused (the default) and run node by node.
func TestForwardParity(t *testing.T) {
	for _, name := range fixtureNames(t) {
		for _, noFusion := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/nofusion=%v", name, noFusion), func(t *testing.T) {
				m, x, y := loadFixture(t, name)
				onTorch(t, func() error {
					p, err := Compile(m, engine.Options{NoFusion: noFusion})
					if err != nil {
						return err
					}
					defer p.Close()
					got, shape, err := runEval(p, x.Float32, x.Shape)
					if err != nil {
						return err
					}
					if len(got) != len(y.Float32) || shape[0] != y.Shape[0] {
						t.Fatalf("output shape %v, want %v", shape, y.Shape)
					}
					abs, rel := maxDiff(got, y.Float32)
					t.Logf("%s: %d of %d nodes run at run time; max abs %.3g, rel %.3g", name, p.Steps(), len(m.GetGraph().GetNode()), abs, rel)
					if abs > 1e-4 || rel > 1e-5 {
						t.Errorf("max abs %.3g (≤ 1e-4), rel %.3g (≤ 1e-5)", abs, rel)
					}
					return nil
				})
			})
		}
	}
}

// TestFusions: the GELU and linear chains of every fixture are fused (2 blocks: 2
// GELUs; 2 × (q/k/v or qkv, [proj], fc1, fc2) linears).
func TestFusions(t *testing.T) {
	want := map[string]int{ // fused linears: MatMul (or Transpose+MatMul) + Add
		"tv_op14_static": 6, "tv_op17_dynamic": 6, "tv_op13_nofold": 6, "tv_op17_static_b1": 6,
		"tv_op17_alias": 6, "timm_op17": 8, "timm_op14": 8, "hf_op17": 12,
	}
	for _, name := range fixtureNames(t) {
		m, _, _ := loadFixture(t, name)
		fused, _ := findFusions(m.GetGraph())
		gelu, linear := 0, 0
		for _, f := range fused {
			if strings.HasPrefix(f.node.GetOpType(), "Gelu") {
				gelu++
			} else {
				linear++
			}
		}
		if w, ok := want[name]; gelu != 2 || ok && linear != w {
			t.Errorf("%s: %d GELU and %d linear fusions, want 2 and %d", name, gelu, linear, want[name])
		}
	}
}

// TestDynamicBatch: a dynamic-batch fixture at batch 1 and 3 agrees with itself.
func TestDynamicBatch(t *testing.T) {
	for _, name := range []string{"tv_op17_dynamic", "tv_op13_nofold", "timm_op17", "hf_op17"} {
		t.Run(name, func(t *testing.T) {
			m, x, y := loadFixture(t, name)
			per := int(constfold.Prod(x.Shape[1:]))
			onTorch(t, func() error {
				p, err := Compile(m, engine.Options{})
				if err != nil {
					return err
				}
				defer p.Close()
				if p.FixedBatch() != 0 {
					t.Fatalf("FixedBatch = %d, want 0", p.FixedBatch())
				}
				classes := int(y.Shape[1])
				// batch 1: example 1 alone
				one, _, err := runEval(p, x.Float32[per:2*per], append([]int64{1}, x.Shape[1:]...))
				if err != nil {
					return err
				}
				if abs, _ := maxDiff(one, y.Float32[classes:]); abs > 1e-4 {
					t.Errorf("batch 1: max abs %.3g against PyTorch", abs)
				}
				// batch 3: examples 1, 0, 1
				x3 := append(append(append([]float32{}, x.Float32[per:2*per]...), x.Float32[:per]...), x.Float32[per:2*per]...)
				three, shape, err := runEval(p, x3, append([]int64{3}, x.Shape[1:]...))
				if err != nil {
					return err
				}
				if shape[0] != 3 {
					t.Fatalf("batch 3 gave shape %v", shape)
				}
				want := append(append(append([]float32{}, y.Float32[classes:]...), y.Float32[:classes]...), y.Float32[classes:]...)
				abs, rel := maxDiff(three, want)
				if abs > 1e-4 || rel > 1e-5 {
					t.Errorf("batch 3: max abs %.3g, rel %.3g", abs, rel)
				}
				if a, _ := maxDiff(three[:classes], one); a > 1e-5 {
					t.Errorf("batch 3 row 0 differs from batch 1 by %.3g", a)
				}
				return nil
			})
		})
	}
}

// TestParams: Floats, SetFloats, WriteBack, and that a changed weight changes outputs.
func TestParams(t *testing.T) {
	m, x, _ := loadFixture(t, "tv_op17_dynamic")
	head := "heads.head.weight"
	onTorch(t, func() error {
		p, err := Compile(m, engine.Options{Trainable: []string{head, "heads.head.bias"}})
		if err != nil {
			return err
		}
		defer p.Close()
		if got := p.Trainable(); len(got) != 2 {
			t.Errorf("Trainable() = %v", got)
		}
		if p.paramTensor(head) == nil || p.paramTensor("nope") != nil {
			t.Error("Param lookup")
		}
		if _, err := p.Grad("conv_proj.weight"); err == nil {
			t.Error("Grad of a frozen weight: no error")
		}
		w, err := p.Floats(head)
		if err != nil {
			return err
		}
		before, _, err := runEval(p, x.Float32, x.Shape)
		if err != nil {
			return err
		}
		w2 := append([]float32{}, w...)
		for k := range w2 {
			w2[k] *= 2
		}
		if err := p.SetFloats(head, w2); err != nil {
			return err
		}
		got, err := p.Floats(head)
		if err != nil {
			return err
		}
		if a, _ := maxDiff(got, w2); a != 0 {
			t.Errorf("Floats after SetFloats differs by %g", a)
		}
		after, _, err := runEval(p, x.Float32, x.Shape)
		if err != nil {
			return err
		}
		if a, _ := maxDiff(after, before); a == 0 {
			t.Error("output did not change with the head weight")
		}
		if err := p.SetFloats(head, w2[:3]); err == nil {
			t.Error("SetFloats with the wrong length: no error")
		}
		// WriteBack into a copy of the model.
		m2 := proto.Clone(m).(*onnxpb.ModelProto)
		if err := p.WriteBack(m2); err != nil {
			return err
		}
		for _, init := range m2.GetGraph().GetInitializer() {
			if init.GetName() == head {
				v, err := onnxio.Floats(init)
				if err != nil {
					return err
				}
				if a, _ := maxDiff(v, w2); a != 0 {
					t.Errorf("written back weight differs by %g", a)
				}
			}
		}
		return nil
	})
}

// TestForwardMicroBatches: eval-mode Forward of a fixed-batch-2 graph on 3 images
// (two runs, the second padded) gives PyTorch's logits for each.
func TestForwardMicroBatches(t *testing.T) {
	m, x, y := loadFixture(t, "tv_op14_static") // fixed batch 2
	per := int(constfold.Prod(x.Shape[1:]))
	onTorch(t, func() error {
		p, err := Compile(m, engine.Options{})
		if err != nil {
			return err
		}
		defer p.Close()
		if p.FixedBatch() != 2 {
			t.Fatalf("FixedBatch = %d, want 2", p.FixedBatch())
		}
		// 3 images: x0, x1, x0 → runs [x0 x1], [x0 pad]
		imgs := append(append([]float32{}, x.Float32...), x.Float32[:per]...)
		res, err := p.Forward(imgs, nil, 3)
		if err != nil {
			return err
		}
		if res.Runs != 2 || !res.MicroBatched || res.Classes != 10 || len(res.Logits) != 30 {
			t.Fatalf("runs %d, micro %v, classes %d, %d logits", res.Runs, res.MicroBatched, res.Classes, len(res.Logits))
		}
		want := append(append([]float32{}, y.Float32...), y.Float32[:10]...)
		if abs, rel := maxDiff(res.Logits, want); abs > 1e-4 || rel > 1e-5 {
			t.Errorf("max abs %.3g, rel %.3g", abs, rel)
		}
		// Without micro-batching Run refuses another batch size.
		xt, err := tensorFromFloats(imgs, []int64{3, 1, 28, 28})
		if err != nil {
			return err
		}
		defer xt.Drop()
		if _, err := p.run(map[string]*ts.Tensor{"input": xt}, false); err == nil {
			t.Error("Run with batch 3 on a batch-2 graph: no error")
		}
		return nil
	})
}

// TestNoLeaks: after runs, backward and Close, gotch holds no tensor the executor made.
func TestNoLeaks(t *testing.T) {
	m, x, _ := loadFixture(t, "tv_op13_nofold")
	labels := []int64{3, 7}
	onTorch(t, func() error {
		base := len(ts.ExistingTensors)
		p, err := Compile(m, engine.Options{Trainable: []string{"heads.head.weight", "encoder.layers.encoder_layer_0.mlp.0.weight"}})
		if err != nil {
			return err
		}
		compiled := 0
		for i := 0; i < 4; i++ {
			if i == 1 { // after the first run, which converts constants once
				compiled = len(ts.ExistingTensors)
			}
			if _, err := p.ForwardBackward(x.Float32, labels, 2); err != nil {
				return err
			}
			if _, err := p.Forward(x.Float32, labels, 2); err != nil {
				return err
			}
			if err := p.ZeroGrad(); err != nil {
				return err
			}
		}
		if n := len(ts.ExistingTensors); n != compiled {
			t.Errorf("%d live tensors after the runs, %d after the first", n, compiled)
		}
		p.Close()
		if n := len(ts.ExistingTensors); n != base {
			t.Errorf("%d live tensors after Close, %d before Compile", n, base)
		}
		return nil
	})
}

// TestExternalModel checks a model made outside the repository (e.g. torchvision's
// vit_b_16 with random weights, 346 MB): SPTCTL_PARITY_MODEL=PREFIX reads
// PREFIX.onnx, PREFIX.input.npy and PREFIX.output.npy (PyTorch's eval output) and
// compares (max abs ≤ 1e-4). With SPTCTL_PARITY_FB_BATCH=B it also times
// train-mode forward+backward at batch B, every weight trainable.
func TestExternalModel(t *testing.T) {
	prefix := os.Getenv("SPTCTL_PARITY_MODEL")
	if prefix == "" {
		t.Skip("set SPTCTL_PARITY_MODEL=PREFIX (PREFIX.onnx, PREFIX.input.npy, PREFIX.output.npy)")
	}
	m, err := onnxio.Load(prefix + ".onnx")
	if err != nil {
		t.Fatal(err)
	}
	x, err := npy.Read(prefix + ".input.npy")
	if err != nil {
		t.Fatal(err)
	}
	y, err := npy.Read(prefix + ".output.npy")
	if err != nil {
		t.Fatal(err)
	}
	batch, _ := strconv.Atoi(os.Getenv("SPTCTL_PARITY_FB_BATCH"))
	onTorch(t, func() error {
		start := time.Now()
		p, err := Compile(m, engine.Options{})
		if err != nil {
			return err
		}
		compiled := time.Since(start)
		start = time.Now()
		got, _, err := runEval(p, x.Float32, x.Shape)
		if err != nil {
			return err
		}
		abs, rel := maxDiff(got, y.Float32)
		t.Logf("compile %v, eval forward of %d: %v; max abs %.3g, rel %.3g", compiled, x.Shape[0], time.Since(start), abs, rel)
		if abs > 1e-4 {
			t.Errorf("max abs %.3g > 1e-4", abs)
		}
		all := p.Params()
		p.Close()
		if batch <= 0 {
			return nil
		}
		p, err = Compile(m, engine.Options{Trainable: all})
		if err != nil {
			return err
		}
		defer p.Close()
		per := int(constfold.Prod(x.Shape[1:]))
		imgs := make([]float32, batch*per)
		labels := make([]int64, batch)
		for k := range imgs {
			imgs[k] = x.Float32[k%len(x.Float32)]
		}
		for i := 0; i < 3; i++ {
			start := time.Now()
			if err := p.ZeroGrad(); err != nil {
				return err
			}
			if _, err := p.ForwardBackward(imgs, labels, batch); err != nil {
				return err
			}
			dt := time.Since(start)
			t.Logf("forward+backward at batch %d: %v, %.2f images/s", batch, dt, float64(batch)/dt.Seconds())
		}
		return nil
	})
}

// TestCompileErrorFrees: a failed Compile leaves no tensor behind.
func TestCompileErrorFrees(t *testing.T) {
	m, _, _ := loadFixture(t, "tv_op17_dynamic")
	onTorch(t, func() error {
		base := len(ts.ExistingTensors)
		_, err := Compile(m, engine.Options{Trainable: []string{"no.such.weight"}})
		if err == nil || !strings.Contains(err.Error(), `trainable "no.such.weight"`) {
			t.Errorf("error %v", err)
		}
		if n := len(ts.ExistingTensors); n != base {
			t.Errorf("%d live tensors after a failed Compile, %d before", n, base)
		}
		return nil
	})
}
