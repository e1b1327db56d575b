package data

import (
	"image"
	"image/color"
	"path/filepath"
	"reflect"
	"testing"
)

// vtabDir writes a small VTAB-1k folder: 4 images (3 PNG, 1 JPEG; one path with a
// space) and the four lists.
func vtabDir(t *testing.T) string {
	dir := t.TempDir()
	writePNGFile(t, filepath.Join(dir, "images/a.png"), grayImg(3, 2, 0))
	writePNGFile(t, filepath.Join(dir, "images/b.png"), rgbImg(4, 4, color.NRGBA{200, 100, 50, 255}))
	writeJPEGFile(t, filepath.Join(dir, "images/c.jpg"), rgbImg(8, 8, color.NRGBA{10, 200, 30, 255}))
	writePNGFile(t, filepath.Join(dir, "images/d e.png"), grayImg(2, 2, 7))
	writeFile(t, filepath.Join(dir, "train800.txt"), []byte("images/a.png 0\n\nimages/b.png 2\r\n"))
	writeFile(t, filepath.Join(dir, "val200.txt"), []byte("images/c.jpg 1\n"))
	writeFile(t, filepath.Join(dir, "train800val200.txt"), []byte("images/a.png 0\nimages/b.png 2\nimages/c.jpg 1\n"))
	writeFile(t, filepath.Join(dir, "test.txt"), []byte("images/d e.png 2\n\n"))
	return dir
}

func TestOpenVTAB(t *testing.T) {
	dir := vtabDir(t)
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d.Layout != LayoutVTAB {
		t.Fatalf("layout %q", d.Layout)
	}
	if got, want := d.Splits(), []string{"train800", "val200", "train800val200", "test"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("splits %v, want %v", got, want)
	}
	// The class count is the training lists' (labels 0, 1, 2), whatever test holds.
	if d.NumClasses() != 3 {
		t.Fatalf("classes %d, want 3", d.NumClasses())
	}
	for alias, name := range map[string]string{"train": "train800", "val": "val200", "trainval": "train800val200", "test": "test"} {
		s, err := d.Split(alias)
		if err != nil {
			t.Fatal(err)
		}
		if s.SplitName() != name {
			t.Fatalf("%s -> %s, want %s", alias, s.SplitName(), name)
		}
	}
	tr, _ := d.Split("train")
	if tr.Len() != 2 || tr.Label(0) != 0 || tr.Label(1) != 2 || tr.Name(1) != "images/b.png" {
		t.Fatalf("train: %d examples, labels %v, names %q", tr.Len(), tr.Labels(), tr.Name(1))
	}
	img, err := tr.Image(0)
	if err != nil {
		t.Fatal(err)
	}
	if g, ok := img.(*image.Gray); !ok || !sameGray(g, grayImg(3, 2, 0)) {
		t.Fatalf("image 0: %T", img)
	}
	va, _ := d.Split("val")
	img, err = va.Image(0)
	if err != nil {
		t.Fatal(err)
	}
	if r, g, b, _ := img.At(3, 3).RGBA(); r>>8 > 30 || g>>8 < 180 || b>>8 > 50 {
		t.Fatalf("jpeg pixel %d %d %d", r>>8, g>>8, b>>8)
	}
	te, _ := d.Split("test")
	if te.Name(0) != "images/d e.png" || te.Label(0) != 2 {
		t.Fatalf("test: %q %d", te.Name(0), te.Label(0))
	}
	if _, err := te.Image(0); err != nil {
		t.Fatal(err)
	}
	_, err = d.Split("validation")
	wantErr(t, err, `no split "validation"`, "train800, val200, train800val200, test")
}

func TestOpenVTABGenericNames(t *testing.T) {
	dir := t.TempDir()
	writePNGFile(t, filepath.Join(dir, "x.png"), grayImg(2, 2, 0))
	writeFile(t, filepath.Join(dir, "train20.txt"), []byte("x.png 1\n"))
	writeFile(t, filepath.Join(dir, "val10.txt"), []byte("x.png 0\n"))
	writeFile(t, filepath.Join(dir, "train20val10.txt"), []byte("x.png 1\nx.png 0\n"))
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Splits(); !reflect.DeepEqual(got, []string{"train20", "val10", "train20val10"}) {
		t.Fatalf("splits %v", got)
	}
	for alias, want := range map[string]string{"train": "train20", "val": "val10", "trainval": "train20val10"} {
		s, err := d.Split(alias)
		if err != nil || s.SplitName() != want {
			t.Fatalf("%s: %v %v", alias, s, err)
		}
	}
	_, err = d.Split("test")
	wantErr(t, err, `no split "test"`, "train20, val10, train20val10")

	// Two train lists: the alias is ambiguous.
	writeFile(t, filepath.Join(dir, "train5.txt"), []byte("x.png 1\n"))
	d, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Split("train")
	wantErr(t, err, "ambiguous", "train20", "train5")
}

func TestOpenVTABErrors(t *testing.T) {
	cases := []struct {
		list string
		want []string
	}{
		{"a.png 0\na.png\n", []string{"train800.txt:2: want `PATH LABEL`"}},
		{"a.png 0\n\na.png x\n", []string{"train800.txt:3:", `label "x" is not an integer`}},
		{"a.png 1.5\n", []string{"train800.txt:1:", "not an integer"}},
		{"a.png -1\n", []string{"train800.txt:1:", "negative"}},
		{"a.png 0\nmissing/b.png 1\n", []string{"train800.txt:2:", "missing/b.png does not exist"}},
		{"sub 0\n", []string{"train800.txt:1:", "sub is a folder"}},
	}
	for _, c := range cases {
		dir := t.TempDir()
		writePNGFile(t, filepath.Join(dir, "a.png"), grayImg(2, 2, 0))
		writePNGFile(t, filepath.Join(dir, "sub/x.png"), grayImg(2, 2, 0))
		writeFile(t, filepath.Join(dir, "train800.txt"), []byte(c.list))
		_, err := Open(dir)
		wantErr(t, err, c.want...)
	}

	// Corrupt images fail at decode time, naming the file.
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "images/bad.png"), []byte("\x89PNG\r\n\x1a\nnot really"))
	writeFile(t, filepath.Join(dir, "images/text.png"), []byte("hello"))
	writeFile(t, filepath.Join(dir, "test.txt"), []byte("images/bad.png 0\nimages/text.png 1\n"))
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := d.Split("test")
	_, err = s.Image(0)
	wantErr(t, err, "decode images/bad.png:")
	_, err = s.Image(1)
	wantErr(t, err, "decode images/text.png:")

	// Nothing recognisable.
	_, err = Open(t.TempDir())
	wantErr(t, err, "no data found")
	_, err = Open(filepath.Join(t.TempDir(), "nope"))
	wantErr(t, err, "nope")
}

func TestOpenImageFolder(t *testing.T) {
	dir := t.TempDir()
	writePNGFile(t, filepath.Join(dir, "train/dog/1.png"), grayImg(2, 2, 0))
	writePNGFile(t, filepath.Join(dir, "train/dog/0.png"), grayImg(2, 2, 1))
	writeJPEGFile(t, filepath.Join(dir, "train/cat/a.JPG"), rgbImg(4, 4, color.NRGBA{1, 2, 3, 255}))
	writeJPEGFile(t, filepath.Join(dir, "train/cat/b.jpeg"), rgbImg(4, 4, color.NRGBA{1, 2, 3, 255}))
	writeFile(t, filepath.Join(dir, "train/cat/notes.txt"), []byte("ignored"))
	writeFile(t, filepath.Join(dir, "train/emu/.keep"), nil) // a class without images
	writePNGFile(t, filepath.Join(dir, "val/dog/v.png"), grayImg(2, 2, 2))
	writePNGFile(t, filepath.Join(dir, "test/cat/t.png"), grayImg(2, 2, 3))
	writePNGFile(t, filepath.Join(dir, "test/emu/u.png"), grayImg(2, 2, 3))
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d.Layout != LayoutImageFolder {
		t.Fatalf("layout %q", d.Layout)
	}
	if !reflect.DeepEqual(d.Classes, []string{"cat", "dog", "emu"}) || d.NumClasses() != 3 {
		t.Fatalf("classes %v (%d)", d.Classes, d.NumClasses())
	}
	if got := d.Splits(); !reflect.DeepEqual(got, []string{"train", "val", "test"}) {
		t.Fatalf("splits %v", got)
	}
	tr, _ := d.Split("train")
	var names []string
	for i := range tr.Len() {
		names = append(names, tr.Name(i))
	}
	if want := []string{"train/cat/a.JPG", "train/cat/b.jpeg", "train/dog/0.png", "train/dog/1.png"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("names %v, want %v", names, want)
	}
	if !reflect.DeepEqual(tr.Labels(), []int{0, 0, 1, 1}) {
		t.Fatalf("labels %v", tr.Labels())
	}
	for i := range tr.Len() {
		if _, err := tr.Image(i); err != nil {
			t.Fatal(err)
		}
	}
	te, _ := d.Split("test")
	if !reflect.DeepEqual(te.Labels(), []int{0, 2}) {
		t.Fatalf("test labels %v", te.Labels())
	}

	// A class in val that train lacks.
	writePNGFile(t, filepath.Join(dir, "val/fox/f.png"), grayImg(2, 2, 2))
	_, err = Open(dir)
	wantErr(t, err, "val/fox", "not a class of the train split", "cat, dog, emu")
}

func TestOpenIDX(t *testing.T) {
	for _, zip := range []bool{false, true} {
		dir := t.TempDir()
		writeIDXSplit(t, dir, "train", 3, 2, []int{1, 0, 4, 2}, zip)
		writeIDXSplit(t, dir, "t10k", 3, 2, []int{4, 3}, zip)
		d, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if d.Layout != LayoutIDX || !reflect.DeepEqual(d.Splits(), []string{"train", "test"}) || d.NumClasses() != 5 {
			t.Fatalf("layout %s splits %v classes %d", d.Layout, d.Splits(), d.NumClasses())
		}
		tr, _ := d.Split("train")
		if tr.Len() != 4 || !reflect.DeepEqual(tr.Labels(), []int{1, 0, 4, 2}) || tr.Name(2) != "idx:2" {
			t.Fatalf("train %d %v %s", tr.Len(), tr.Labels(), tr.Name(2))
		}
		img, err := tr.Image(2)
		if err != nil {
			t.Fatal(err)
		}
		g, ok := img.(*image.Gray)
		if !ok || !sameGray(g, grayImg(3, 2, 20)) {
			t.Fatalf("image 2: %T %v", img, img)
		}
		te, _ := d.Split("test")
		if te.Len() != 2 || te.Label(1) != 3 {
			t.Fatalf("test %v", te.Labels())
		}
	}
}

func TestOpenIDXErrors(t *testing.T) {
	good := idxBytes([]int{2, 2, 2}, make([]byte, 8))
	labs := idxBytes([]int{2}, []byte{0, 1})
	cases := []struct {
		name       string
		img, lab   []byte
		imgN, labN string
		want       []string
	}{
		{"bad magic", append([]byte{0, 0, 9, 3}, good[4:]...), labs, "", "", []string{"train-images-idx3-ubyte: bad magic 00 00 09 03"}},
		{"labels as images", labs, labs, "", "", []string{"train-images-idx3-ubyte: bad magic"}},
		{"truncated", good[:len(good)-3], labs, "", "", []string{"train-images-idx3-ubyte: truncated", "need 8 data bytes, file has 5"}},
		{"truncated header", good[:9], labs, "", "", []string{"truncated", "header needs 16"}},
		{"trailing", append(append([]byte{}, good...), 1), labs, "", "", []string{"trailing data"}},
		{"truncated gzip", gz(good)[:20], labs, "train-images-idx3-ubyte.gz", "", []string{"train-images-idx3-ubyte.gz: truncated gzip"}},
		{"gzip without trailer", func() []byte { z := gz(good); return z[:len(z)-4] }(), labs, "train-images-idx3-ubyte.gz", "", []string{"train-images-idx3-ubyte.gz: truncated gzip"}},
		{"count mismatch", good, idxBytes([]int{3}, []byte{0, 1, 2}), "", "", []string{"2 images", "3 labels"}},
		{"no labels", good, nil, "", "", []string{"no labels file"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			in, ln := c.imgN, c.labN
			if in == "" {
				in = "train-images-idx3-ubyte"
			}
			if ln == "" {
				ln = "train-labels-idx1-ubyte"
			}
			writeFile(t, filepath.Join(dir, in), c.img)
			if c.lab != nil {
				writeFile(t, filepath.Join(dir, ln), c.lab)
			}
			_, err := Open(dir)
			wantErr(t, err, c.want...)
		})
	}
}
