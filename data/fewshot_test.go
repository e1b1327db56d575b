package data

import (
	"bytes"
	"encoding/json"
	"image"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
)

const fashionMNIST = "/usr/share/datasets/fashion-mnist"

func needFashion(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(fashionMNIST, "train-images-idx3-ubyte.gz")); err != nil {
		t.Skipf("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): %v", err)
	}
}

var fashion = sync.OnceValues(func() (*Dataset, error) { return Open(fashionMNIST) })

// fashionSplits returns the Fashion-MNIST train and test splits (opened once).
func fashionSplits(t *testing.T) (train, test *Split) {
	t.Helper()
	d, err := fashion()
	if err != nil {
		t.Fatal(err)
	}
	train, _ = d.Split("train")
	test, _ = d.Split("test")
	return train, test
}

func readManifest(t *testing.T, dir string) Manifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// sameTree reports whether two folders hold the same files with the same bytes.
func sameTree(t *testing.T, a, b string) bool {
	t.Helper()
	files := func(root string) map[string][]byte {
		m := map[string][]byte{}
		filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			if !e.IsDir() {
				rel, _ := filepath.Rel(root, p)
				m[rel], _ = os.ReadFile(p)
			}
			return nil
		})
		return m
	}
	fa, fb := files(a), files(b)
	if len(fa) != len(fb) {
		return false
	}
	for k, v := range fa {
		if !bytes.Equal(v, fb[k]) {
			return false
		}
	}
	return true
}

func TestParseClasses(t *testing.T) {
	for s, want := range map[string][]int{
		"5-9":       {5, 6, 7, 8, 9},
		"0,2,4":     {0, 2, 4},
		" 3 , 0-1 ": {3, 0, 1},
		"7":         {7},
	} {
		got, err := ParseClasses(s)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: %v %v, want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "a", "1,,2", "9-5", "-1", "1-2-3", "1,1", "0-3,2"} {
		if got, err := ParseClasses(s); err == nil {
			t.Fatalf("%q accepted: %v", s, got)
		}
	}
}

func TestFewShotClasses(t *testing.T) {
	needFashion(t)
	classes, err := ParseClasses("5-9")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	out := filepath.Join(tmp, "task")
	opt := FewShotOptions{From: fashionMNIST, Classes: classes, Train: 20, Val: 10, Test: 30, Seed: 1, Out: out}
	if err := FewShot(opt); err != nil {
		t.Fatal(err)
	}
	d, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	if d.Layout != LayoutVTAB || !reflect.DeepEqual(d.Splits(), []string{"train20", "val10", "train20val10", "test"}) {
		t.Fatalf("layout %s, splits %v", d.Layout, d.Splits())
	}
	if d.NumClasses() != 5 {
		t.Fatalf("%d classes", d.NumClasses())
	}
	srcTrain, srcTest := fashionSplits(t)
	m := readManifest(t, out)
	counts := map[string]int{"train": 20, "val": 10, "trainval": 30, "test": 30}
	for name, n := range counts {
		s, err := d.Split(name)
		if err != nil {
			t.Fatal(err)
		}
		if s.Len() != n {
			t.Fatalf("%s: %d examples, want %d", name, s.Len(), n)
		}
		if name == "trainval" {
			continue
		}
		from := srcTrain
		if name == "test" {
			from = srcTest
		}
		if len(m.Source[name]) != n {
			t.Fatalf("manifest: %d sources for %s", len(m.Source[name]), name)
		}
		for i := range n {
			l := s.Label(i)
			if l < 0 || l > 4 {
				t.Fatalf("%s %d: label %d", name, i, l)
			}
			ex := m.Source[name][i]
			if want := from.Label(ex) - 5; l != want {
				t.Fatalf("%s %d: label %d, source class %d", name, i, l, from.Label(ex))
			}
			got, err := s.Image(i)
			if err != nil {
				t.Fatal(err)
			}
			orig, _ := from.Image(ex)
			if !sameGray(got.(*image.Gray), orig.(*image.Gray)) {
				t.Fatalf("%s %d: image differs from idx:%d", name, i, ex)
			}
		}
	}
	// Train and val are disjoint.
	for _, i := range m.Source["train"] {
		if slices.Contains(m.Source["val"], i) {
			t.Fatalf("idx:%d in train and val", i)
		}
	}
	// Same options: identical folder. Another seed: another draw.
	out2 := filepath.Join(tmp, "task2")
	opt.Out = out2
	if err := FewShot(opt); err != nil {
		t.Fatal(err)
	}
	if !sameTree(t, out, out2) {
		t.Fatal("same seed, different output")
	}
	opt.Seed = 2
	if err := FewShot(opt); err != nil { // replaces out2: an earlier complete output
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(out, "train20.txt"))
	b, _ := os.ReadFile(filepath.Join(out2, "train20.txt"))
	if bytes.Equal(a, b) {
		t.Fatal("seeds 1 and 2 drew the same train set")
	}
	if readManifest(t, out2).Seed != 2 {
		t.Fatal("out2 not replaced")
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 2 {
		t.Fatalf("left behind: %v", entries)
	}
}

func TestFewShotRotation(t *testing.T) {
	needFashion(t)
	out := filepath.Join(t.TempDir(), "rot")
	if err := FewShot(FewShotOptions{From: fashionMNIST, Classes: []int{0, 2, 4}, Train: 20, Val: 10, Test: 30, Task: TaskRotation, Seed: 3, Out: out}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	if d.NumClasses() != 4 {
		t.Fatalf("%d classes", d.NumClasses())
	}
	srcTrain, srcTest := fashionSplits(t)
	m := readManifest(t, out)
	seenLabels := map[int]bool{}
	for _, name := range []string{"train", "val", "test"} {
		s, _ := d.Split(name)
		from := srcTrain
		if name == "test" {
			from = srcTest
		}
		for i := range s.Len() {
			k := s.Label(i)
			if k < 0 || k > 3 {
				t.Fatalf("%s %d: label %d", name, i, k)
			}
			seenLabels[k] = true
			ex := m.Source[name][i]
			if c := from.Label(ex); c != 0 && c != 2 && c != 4 {
				t.Fatalf("%s %d: source class %d", name, i, c)
			}
			img, err := s.Image(i)
			if err != nil {
				t.Fatal(err)
			}
			back := rotateCCW(img.(*image.Gray), -k) // clockwise by k·90°
			orig, _ := from.Image(ex)
			if !sameGray(back, orig.(*image.Gray)) {
				t.Fatalf("%s %d: rotating back by %d·90° does not give idx:%d", name, i, k, ex)
			}
		}
	}
	if len(seenLabels) != 4 {
		t.Fatalf("labels drawn: %v", seenLabels)
	}
}

func TestRotateCCW(t *testing.T) {
	g := grayImg(3, 2, 0) // 0 1 2 / 3 4 5
	want := map[int][]uint8{
		0: {0, 1, 2, 3, 4, 5},
		1: {2, 5, 1, 4, 0, 3}, // numpy rot90(a, 1)
		2: {5, 4, 3, 2, 1, 0},
		3: {3, 0, 4, 1, 5, 2},
	}
	for k, w := range want {
		r := rotateCCW(g, k)
		if !slices.Equal(r.Pix, w) {
			t.Fatalf("k=%d: %v, want %v", k, r.Pix, w)
		}
		if !sameGray(rotateCCW(r, 4-k), g) {
			t.Fatalf("k=%d: no round trip", k)
		}
	}
}

func TestFewShotAllTest(t *testing.T) {
	needFashion(t)
	out := filepath.Join(t.TempDir(), "all")
	if err := FewShot(FewShotOptions{From: fashionMNIST, Classes: []int{3}, Train: 5, Test: 0, Out: out, Seed: 9}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Splits(); !reflect.DeepEqual(got, []string{"train5", "test"}) {
		t.Fatalf("splits %v", got)
	}
	te, _ := d.Split("test")
	if te.Len() != 1000 { // Fashion-MNIST: 1,000 test images per class
		t.Fatalf("%d test images, want 1000", te.Len())
	}
	for _, l := range te.Labels() {
		if l != 0 {
			t.Fatalf("label %d", l)
		}
	}
}

func TestFewShotErrors(t *testing.T) {
	// A tiny IDX set: train has 12 images (3 of each class 0…3), test 8 (2 of each).
	src := t.TempDir()
	trainLabels := []int{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}
	writeIDXSplit(t, src, "train", 5, 4, trainLabels, true)
	writeIDXSplit(t, src, "t10k", 5, 4, trainLabels[:8], false)
	tmp := t.TempDir()
	base := FewShotOptions{From: src, Classes: []int{2, 1}, Train: 3, Val: 2, Test: 3, Out: filepath.Join(tmp, "o")}
	cases := []struct {
		mod  func(*FewShotOptions)
		want []string
	}{
		{func(o *FewShotOptions) { o.Train, o.Val = 5, 2 }, []string{"5 train + 2 val = 7 examples of classes [2 1]", "only 6"}},
		{func(o *FewShotOptions) { o.Test = 5 }, []string{"5 test", "only 4"}},
		{func(o *FewShotOptions) { o.Classes = []int{4} }, []string{"class 4", "0…3"}},
		{func(o *FewShotOptions) { o.Classes = []int{1, 1} }, []string{"class 1 given twice"}},
		{func(o *FewShotOptions) { o.Task = "jigsaw" }, []string{`task "jigsaw"`}},
		{func(o *FewShotOptions) { o.Train = 0 }, []string{"train ≥ 1"}},
		{func(o *FewShotOptions) { o.From = tmp }, []string{"no data found"}},
		{func(o *FewShotOptions) { o.From = vtabDir(t) }, []string{"vtab1k folder; want IDX"}},
	}
	for _, c := range cases {
		o := base
		c.mod(&o)
		wantErr(t, FewShot(o), c.want...)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Fatalf("failed runs left %v", entries)
	}

	// The largest draw there is works, and relabels in the order given.
	o := base
	o.Train, o.Val, o.Test = 4, 2, 0
	if err := FewShot(o); err != nil {
		t.Fatal(err)
	}
	d, err := Open(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	te, _ := d.Split("test")
	if !reflect.DeepEqual(te.Labels(), []int{1, 0, 1, 0}) { // source classes 1 2 1 2
		t.Fatalf("test labels %v", te.Labels())
	}

	// Output folders: foreign content is refused, an empty folder is fine.
	foreign := filepath.Join(tmp, "foreign")
	writeFile(t, filepath.Join(foreign, "keep.txt"), []byte("mine"))
	o = base
	o.Out = foreign
	wantErr(t, FewShot(o), "refusing to overwrite", foreign, ManifestFile)
	if b, _ := os.ReadFile(filepath.Join(foreign, "keep.txt")); string(b) != "mine" {
		t.Fatal("foreign folder touched")
	}
	file := filepath.Join(tmp, "file")
	writeFile(t, file, []byte("x"))
	o.Out = file
	wantErr(t, FewShot(o), "not a folder")
	empty := filepath.Join(tmp, "empty")
	os.Mkdir(empty, 0o755)
	o.Out = empty
	if err := FewShot(o); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(empty); err != nil {
		t.Fatal(err)
	}
}
