package sensitivity

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio"
)

// TestHeadSeedsAverage: the scores of K random heads are the mean of K single-head
// runs with the derived seeds, and the model is left as it was.
func TestHeadSeedsAverage(t *testing.T) {
	dir := t.TempDir()
	ds := fixture.OpenFewShot(t, data.FewShotOptions{Classes: []int{5, 6, 7, 8, 9}, Train: 24, Val: 0, Test: 5, Seed: 2, Out: filepath.Join(dir, "task")})
	split, _ := ds.Split("train")
	pre := data.DefaultPreprocess(1, 28, 28)
	m, err := onnxio.Load("../testdata/tv_op14_static.onnx")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := onnxio.Fingerprint(m.Graph)
	w := torch.NewWorker()
	defer w.Close()
	opt := Options{Batches: 2, BatchSize: 8, Classes: 5, HeadSeed: 7, Seed: 1}
	const k = 3
	seeds := map[int64]bool{}
	want := Scores{}
	for i := 0; i < k; i++ {
		o := opt
		o.HeadSeed = headSeed(opt.HeadSeed, i)
		seeds[o.HeadSeed] = true
		s, _, err := Compute(context.Background(), w, m, split, pre, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		for name, x := range s {
			if want[name] == nil {
				want[name] = make([]float32, len(x))
			}
			for j := range x {
				want[name][j] += x[j] / k
			}
		}
	}
	if len(seeds) != k || !seeds[opt.HeadSeed] {
		t.Fatalf("derived head seeds %v", seeds)
	}
	opt.HeadSeeds = k
	got, info, err := Compute(context.Background(), w, m, split, pre, opt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Head != inject.HeadRandom || info.HeadSeeds != k || info.Batches != 2 {
		t.Errorf("info %+v", info)
	}
	for name, x := range want {
		for j := range x {
			if d := math.Abs(float64(got[name][j] - x[j])); d > 1e-5*math.Abs(float64(x[j]))+1e-30 {
				t.Fatalf("%s[%d]: mean of %d heads %g, want %g", name, j, k, got[name][j], x[j])
			}
		}
	}
	if after, _ := onnxio.Fingerprint(m.Graph); after != before {
		t.Error("Compute changed the model")
	}
	opt.Head = inject.HeadProbe
	if _, _, err := Compute(context.Background(), w, m, split, pre, opt, nil); err == nil || !strings.Contains(err.Error(), "random heads") {
		t.Errorf("head seeds with a probe head: %v", err)
	}
}

// TestClassMeanHeadIsNearestMean checks the zero-mean head against the rule it
// stands for: every example goes to the class whose mean feature is nearest, and the
// weight rows average to zero over the examples.
func TestClassMeanHeadIsNearestMean(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const n, d, classes = 300, 7, 4
	f := &features{n: n, dim: d, x: make([]float32, n*d), labels: make([]int64, n)}
	for i := 0; i < n; i++ {
		f.labels[i] = int64(r.IntN(classes))
		for j := 0; j < d; j++ {
			f.x[i*d+j] = float32(r.NormFloat64() + 0.7*float64(f.labels[i]*int64(j%3)) + 3)
		}
	}
	means := make([][]float64, classes)
	counts := make([]float64, classes)
	for c := range means {
		means[c] = make([]float64, d)
	}
	for i := 0; i < n; i++ {
		c := f.labels[i]
		counts[c]++
		for j := 0; j < d; j++ {
			means[c][j] += float64(f.x[i*d+j])
		}
	}
	for c := range means {
		for j := range means[c] {
			means[c][j] /= counts[c]
		}
	}
	h := classMeanHead(f, classes)
	p := make([]float64, classes)
	for i := 0; i < n; i++ {
		best, bestD := 0, math.Inf(1)
		for c := 0; c < classes; c++ {
			dist := 0.0
			for j := 0; j < d; j++ {
				e := float64(f.x[i*d+j]) - means[c][j]
				dist += e * e
			}
			if dist < bestD {
				best, bestD = c, dist
			}
		}
		softmax(p, h.Weight, h.Bias, f.x[i*d:(i+1)*d])
		arg := 0
		for c := range p {
			if p[c] > p[arg] {
				arg = c
			}
		}
		if arg != best {
			t.Fatalf("example %d: head says class %d, nearest mean is %d", i, arg, best)
		}
	}
	for j := 0; j < d; j++ {
		s := 0.0
		for c := 0; c < classes; c++ {
			s += counts[c] * float64(h.Weight[c*d+j])
		}
		if math.Abs(s/n) > 1e-5 {
			t.Errorf("column %d of the weight averages %g over the examples, want 0", j, s/n)
		}
	}
}
