package torch

import (
	"encoding/json"
	"fmt"
	"github.com/sptctl/sptctl/engine"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sptctl/sptctl/internal/npy"
)

// Backward parity: gradients of the mean cross-entropy with respect to every
// initializer, executor against Debian PyTorch's autograd on the module the fixture
// was exported from, with the fixture's weights (engine/torch/testdata/grads.py).

// oracleCases are fixture:N pairs (N = 0: the fixture's own input; else N seeded
// random images). Fixed-batch fixtures with N ≠ their batch run as micro-batches.
var oracleCases = []string{
	"tv_op14_static:0", "tv_op17_dynamic:0", "tv_op13_nofold:0", "tv_op17_static_b1:0",
	"timm_op17:0", "timm_op14:0", "hf_op17:0", "tv_op17_alias:0",
	"tv_op17_static_b1:4", // fixed batch 1: 4 micro-batches
	"tv_op14_static:3",    // fixed batch 2: 2 micro-batches, the last one padded
	"tv_op17_dynamic:5",
}

const oraclePython = "/usr/bin/python3"

var (
	oracleOnce sync.Once
	oracleDir  string
	oracleErr  error
	oracleSkip string
)

func oracle(t *testing.T) string {
	t.Helper()
	oracleOnce.Do(func() {
		if err := exec.Command(oraclePython, "-c", "import torch, torchvision, onnx").Run(); err != nil {
			oracleSkip = fmt.Sprintf("%s with torch, torchvision and onnx is needed for the gradient oracle: %v", oraclePython, err)
			return
		}
		dir, err := os.MkdirTemp("", "sptctl-grads-")
		if err != nil {
			oracleErr = err
			return
		}
		oracleDir = dir
		args := append([]string{filepath.Join("testdata", "grads.py"), dir}, oracleCases...)
		out, err := exec.Command(oraclePython, args...).CombinedOutput()
		if err != nil {
			oracleErr = fmt.Errorf("grads.py: %v\n%s", err, out)
		}
	})
	if oracleSkip != "" {
		t.Skip(oracleSkip)
	}
	if oracleErr != nil {
		t.Fatal(oracleErr)
	}
	return oracleDir
}

// diffNorms returns ‖a-b‖ and ‖b‖.
func diffNorms(a, b []float32) (diff, normB float64) {
	var d, nb float64
	for i := range a {
		x := float64(a[i]) - float64(b[i])
		d += x * x
		nb += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(d), math.Sqrt(nb)
}

func TestBackwardParity(t *testing.T) {
	dir := oracle(t)
	defer func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	}()
	for _, c := range oracleCases {
		var name string
		var n int
		if _, err := fmt.Sscanf(replaceColon(c), "%s %d", &name, &n); err != nil {
			t.Fatal(err)
		}
		for _, noFusion := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s_%d/nofusion=%v", name, n, noFusion), func(t *testing.T) {
				d := filepath.Join(dir, fmt.Sprintf("%s_%d", name, n))
				m, _, _ := loadFixture(t, name)
				x, err := npy.Read(filepath.Join(d, "input.npy"))
				if err != nil {
					t.Fatal(err)
				}
				labels, err := npy.Read(filepath.Join(d, "labels.npy"))
				if err != nil {
					t.Fatal(err)
				}
				wantLoss, err := npy.Read(filepath.Join(d, "loss.npy"))
				if err != nil {
					t.Fatal(err)
				}
				wantLogits, err := npy.Read(filepath.Join(d, "logits.npy"))
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(filepath.Join(d, "grads.json"))
				if err != nil {
					t.Fatal(err)
				}
				var index map[string]string
				if err := json.Unmarshal(b, &index); err != nil {
					t.Fatal(err)
				}
				count := int(x.Shape[0])
				onTorch(t, func() error {
					all, err := allParams(m)
					if err != nil {
						return err
					}
					p, err := Compile(m, engine.Options{Trainable: all, NoFusion: noFusion})
					if err != nil {
						return err
					}
					defer p.Close()
					if len(all) != len(index) {
						t.Errorf("%d float initializers, oracle has %d gradients", len(all), len(index))
					}
					res, err := p.ForwardBackward(x.Float32, labels.Int64, count)
					if err != nil {
						return err
					}
					fb := p.FixedBatch()
					wantMicro := fb > 0 && fb != count
					if res.MicroBatched != wantMicro {
						t.Errorf("MicroBatched = %v with fixed batch %d and %d examples", res.MicroBatched, fb, count)
					}
					if wantRuns := 1; fb > 0 && (count+fb-1)/fb != res.Runs || fb == 0 && res.Runs != wantRuns {
						t.Errorf("%d runs for %d examples, fixed batch %d", res.Runs, count, fb)
					}
					if d := math.Abs(res.Loss - float64(wantLoss.Float32[0])); d > 1e-5*math.Max(1, math.Abs(res.Loss)) {
						t.Errorf("loss %.7g, PyTorch %.7g", res.Loss, wantLoss.Float32[0])
					}
					if abs, rel := maxDiff(res.Logits, wantLogits.Float32); abs > 1e-4 || rel > 1e-5 {
						t.Errorf("logits: max abs %.3g, rel %.3g", abs, rel)
					}
					got := map[string][]float32{}
					want := map[string][]float32{}
					scale := 0.0 // the largest gradient norm
					for _, pname := range all {
						fn, ok := index[pname]
						if !ok {
							t.Errorf("oracle has no gradient for %q", pname)
							continue
						}
						w, err := npy.Read(filepath.Join(d, fn))
						if err != nil {
							return err
						}
						g, err := p.Grad(pname)
						if err != nil {
							return err
						}
						if len(g) != len(w.Float32) {
							t.Errorf("%s: %d gradient values, oracle %d", pname, len(g), len(w.Float32))
							continue
						}
						got[pname], want[pname] = g, w.Float32
						_, nb := diffNorms(w.Float32, w.Float32)
						scale = math.Max(scale, nb)
					}
					// A gradient that is zero in exact arithmetic (the key bias: softmax
					// ignores a constant added to every score of a row) is rounding noise
					// in both; it must stay below 1e-6 of the largest gradient norm.
					worst, worstName, zeros := 0.0, "", 0
					for _, pname := range all {
						g, w := got[pname], want[pname]
						if g == nil {
							continue
						}
						diff, nb := diffNorms(g, w)
						if nb < 1e-6*scale {
							zeros++
							if diff > 1e-6*scale {
								t.Errorf("%s: zero gradient (oracle norm %.3g) differs by %.3g", pname, nb, diff)
							}
							continue
						}
						rel := diff / nb
						if rel > 1e-4 {
							t.Errorf("%s: gradient relative error %.3g (|oracle| = %.3g)", pname, rel, nb)
						}
						if rel > worst {
							worst, worstName = rel, pname
						}
					}
					t.Logf("%s (fusion %v), %d examples: %d runs (micro-batched %v), loss %.6f (PyTorch %.6f), %d gradients (%d zero in exact arithmetic), worst relative error %.3g (%s)",
						name, !noFusion, count, res.Runs, res.MicroBatched, res.Loss, wantLoss.Float32[0], len(all), zeros, worst, worstName)

					// ZeroGrad clears them.
					if err := p.ZeroGrad(); err != nil {
						return err
					}
					g, err := p.Grad(all[0])
					if err != nil {
						return err
					}
					for _, v := range g {
						if v != 0 {
							t.Fatalf("gradient of %s not zero after ZeroGrad", all[0])
						}
					}
					// Dropped, not zeroed: no gradient-sized tensor kept or added to.
					for _, pname := range all {
						gt, err := p.gradTensor(pname)
						if err != nil {
							return err
						}
						if gt != nil {
							gt.Drop()
							return fmt.Errorf("%s still has a gradient tensor after ZeroGrad", pname)
						}
					}
					// The next backward's gradients are that batch's alone (dropped, not
					// added to), and without ZeroGrad the one after adds to them.
					for k, want := range []float64{1, 2} {
						if _, err := p.ForwardBackward(x.Float32, labels.Int64, count); err != nil {
							return err
						}
						for _, pname := range all {
							g, err := p.Grad(pname)
							if err != nil {
								return err
							}
							if w := got[pname]; w != nil {
								w2 := make([]float32, len(w))
								for i := range w {
									w2[i] = float32(want) * w[i]
								}
								if d, nb := diffNorms(g, w2); d > 1e-5*nb+1e-7*scale {
									t.Errorf("backward %d after ZeroGrad: %s gradient off %.0fx the first by %.3g (norm %.3g)", k+1, pname, want, d, nb)
								}
							}
						}
					}
					return nil
				})
			})
		}
	}
}

func replaceColon(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] == ':' {
			b[i] = ' '
		}
	}
	return string(b)
}
