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
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
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

// threeClassTask is the small task TestReleaseWeights and TestSpillMatchesInMemory
// score on: Fashion-MNIST classes 0-2, 16 training images, and the fixtures'
// preprocessing.
func threeClassTask(t *testing.T) (*data.Split, meta.Preprocess) {
	t.Helper()
	ds := fixture.OpenFewShot(t, data.FewShotOptions{Classes: []int{0, 1, 2}, Train: 16, Val: 0, Test: 3, Seed: 1, Out: filepath.Join(t.TempDir(), "task")})
	split, _ := ds.Split("train")
	return split, data.DefaultPreprocess(1, 28, 28)
}

// TestReleaseWeights: with ReleaseWeights the scores are the same, and the model keeps
// its initializers' names and shapes but no data.
func TestReleaseWeights(t *testing.T) {
	const fx = "tv_op14_static"
	split, pre := threeClassTask(t)
	w := torch.NewWorker()
	defer w.Close()
	var scores [2]Scores
	var models [2]*onnxpb.ModelProto
	for k, release := range []bool{false, true} {
		m, err := onnxio.Load("../testdata/" + fx + ".onnx")
		if err != nil {
			t.Fatal(err)
		}
		s, _, err := Compute(context.Background(), w, m, split, pre,
			Options{Batches: 2, BatchSize: 4, Classes: 3, HeadSeed: 5, ReleaseWeights: release}, nil)
		if err != nil {
			t.Fatal(err)
		}
		scores[k], models[k] = s, m
	}
	for name, want := range scores[0] {
		got := scores[1][name]
		if len(got) != len(want) {
			t.Fatalf("%s: %d scores, want %d", name, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%s[%d]: %g with ReleaseWeights, %g without", name, i, got[i], want[i])
			}
		}
	}
	kept, dropped := models[0].GetGraph().GetInitializer(), models[1].GetGraph().GetInitializer()
	for i, ini := range dropped {
		if ini.GetName() != kept[i].GetName() || len(ini.GetDims()) != len(kept[i].GetDims()) {
			t.Fatalf("initializer %d: %q %v, want %q %v", i, ini.GetName(), ini.GetDims(), kept[i].GetName(), kept[i].GetDims())
		}
		if len(ini.GetRawData()) != 0 || len(ini.GetFloatData()) != 0 || len(ini.GetInt64Data()) != 0 {
			t.Fatalf("initializer %q kept its data", ini.GetName())
		}
	}
	if len(kept) > 0 && len(kept[0].GetRawData())+len(kept[0].GetFloatData())+len(kept[0].GetInt64Data()) == 0 {
		t.Fatal("without ReleaseWeights the model lost its data")
	}
}

// TestSpillMatchesInMemory: with SpillDir the scores are the same to the bit as with
// the sums in memory (3 batches, 2 heads: the file is reused), and no temporary file
// is left in the folder, after success or after an error.
func TestSpillMatchesInMemory(t *testing.T) {
	const fx = "tv_op14_static"
	split, pre := threeClassTask(t)
	m, err := onnxio.Load("../testdata/" + fx + ".onnx")
	if err != nil {
		t.Fatal(err)
	}
	w := torch.NewWorker()
	defer w.Close()
	opt := Options{Batches: 3, BatchSize: 4, Classes: 3, HeadSeed: 5, HeadSeeds: 2, Head: inject.HeadRandom}
	want, _, err := Compute(context.Background(), w, m, split, pre, opt, nil)
	if err != nil {
		t.Fatal(err)
	}
	spillDir := t.TempDir()
	opt.SpillDir = spillDir
	got, info, err := Compute(context.Background(), w, m, split, pre, opt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Batches != 3 {
		t.Fatalf("%d batches, want 3", info.Batches)
	}
	for name, wv := range want {
		gv := got[name]
		if len(gv) != len(wv) {
			t.Fatalf("%s: %d scores, want %d", name, len(gv), len(wv))
		}
		for i := range wv {
			if math.Float32bits(gv[i]) != math.Float32bits(wv[i]) {
				t.Fatalf("%s[%d]: %g spilled, %g in memory", name, i, gv[i], wv[i])
			}
		}
	}
	empty := func(when string) {
		t.Helper()
		left, err := os.ReadDir(spillDir)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 0 {
			t.Fatalf("%s: %s left in the spill folder", when, left[0].Name())
		}
	}
	empty("after success")

	// Stopped after the first batch (the sums in the file): nothing left either.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, err = Compute(ctx, w, m, split, pre, opt, func(done, total int) { cancel() })
	if err == nil {
		t.Fatal("a cancelled run succeeded")
	}
	empty("after an error")

	// A folder that is not there is named before any batch runs.
	opt.SpillDir = filepath.Join(spillDir, "missing")
	_, _, err = Compute(context.Background(), w, m, split, pre, opt, nil)
	if err == nil || !strings.Contains(err.Error(), opt.SpillDir) {
		t.Fatalf("missing spill folder: %v, want an error naming it", err)
	}
}
