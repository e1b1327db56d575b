package sensitivity

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// TestComputeMatchesPyTorch scores a fixture on real Fashion-MNIST batches and compares
// with PyTorch's Σ grad² over the same batches and the same head: the top-1% set must
// be the same, and every tensor's scores close.
func TestComputeMatchesPyTorch(t *testing.T) {
	const fx, classes, batches, batchSize, seed, headSeed = "tv_op14_static", 5, 3, 8, 4, 11
	dir := t.TempDir()
	task := filepath.Join(dir, "task")
	ds := fixture.OpenFewShot(t, data.FewShotOptions{Classes: []int{5, 6, 7, 8, 9}, Train: 40, Val: 0, Test: 5, Seed: 2, Out: task})
	trainSplit, _ := ds.Split("train")
	pre := data.DefaultPreprocess(1, 28, 28)
	m, err := onnxio.Load("../testdata/" + fx + ".onnx")
	if err != nil {
		t.Fatal(err)
	}
	w := torch.NewWorker()
	defer w.Close()
	got, info, err := Compute(context.Background(), w, m, trainSplit, pre,
		Options{Batches: batches, BatchSize: batchSize, Classes: classes, HeadSeed: headSeed, Seed: seed}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Batches != batches || info.Examples != batches*batchSize {
		t.Fatalf("info %+v", info)
	}
	// The same batches and head, for the oracle.
	it := data.NewLoader(trainSplit, pre, batchSize, true, seed, 1).Epoch(context.Background(), 0, 0)
	for k := 0; k < batches; k++ {
		b, ok, err := it.Next()
		if err != nil || !ok {
			t.Fatal(err)
		}
		npy.Write(filepath.Join(dir, "batch"+itoa(k)+".npy"), &npy.Array{Shape: []int64{int64(b.N), 1, 28, 28}, Float32: b.Images})
		npy.Write(filepath.Join(dir, "labels"+itoa(k)+".npy"), &npy.Array{Shape: []int64{int64(b.N)}, Int64: b.Labels})
	}
	it.Close()
	base, _ := onnxio.Load("../testdata/" + fx + ".onnx")
	if !proto.Equal(m, base) {
		t.Error("Compute changed its input model")
	}
	v, _ := surgery.FindViT(surgery.New(base))
	hw, hb := inject.HeadInit(v.Head.In, classes, headSeed)
	npy.Write(filepath.Join(dir, "head_weight.npy"), &npy.Array{Shape: []int64{classes, int64(v.Head.In)}, Float32: hw})
	npy.Write(filepath.Join(dir, "head_bias.npy"), &npy.Array{Shape: []int64{classes}, Float32: hb})
	if out, err := exec.Command("/usr/bin/python3", "testdata/scores.py", fx, dir).CombinedOutput(); err != nil {
		t.Fatalf("oracle: %v\n%s", err, out)
	}
	var index map[string]string
	b, _ := os.ReadFile(filepath.Join(dir, "out", "scores.json"))
	json.Unmarshal(b, &index)
	want := Scores{}
	for name := range got {
		f, ok := index[name]
		if !ok {
			t.Fatalf("oracle has no scores for %q", name)
		}
		a, err := npy.Read(filepath.Join(dir, "out", f))
		if err != nil {
			t.Fatal(err)
		}
		want[name] = a.Float32
		var num, den float64
		for i := range a.Float32 {
			d := float64(got[name][i] - a.Float32[i])
			num += d * d
			den += float64(a.Float32[i]) * float64(a.Float32[i])
		}
		if den > 0 && math.Sqrt(num/den) > 1e-3 {
			t.Errorf("%s: relative error %.2g", name, math.Sqrt(num/den))
		}
	}
	top := func(s Scores) map[string]bool {
		type e struct {
			k string
			v float32
		}
		var all []e
		for n, vs := range s {
			for i, x := range vs {
				all = append(all, e{n + "#" + itoa(i), x})
			}
		}
		sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v })
		set := map[string]bool{}
		for _, x := range all[:len(all)/100] {
			set[x.k] = true
		}
		return set
	}
	g, o := top(got), top(want)
	same := 0
	for k := range g {
		if o[k] {
			same++
		}
	}
	t.Logf("top-1%%: %d of %d entries shared with PyTorch", same, len(g))
	if same != len(g) {
		t.Errorf("top-1%% sets differ: %d of %d shared", same, len(g))
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
