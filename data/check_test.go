package data

import (
	"encoding/binary"
	"hash/crc32"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/internal/meta"
)

// Labels are checked against the task's classes when the data set is opened; the
// error names the list file and line.
func TestOpenChecksLabels(t *testing.T) {
	list := func(t *testing.T, files map[string]string) string {
		dir := t.TempDir()
		writePNGFile(t, filepath.Join(dir, "a.png"), grayImg(2, 2, 0))
		for name, text := range files {
			writeFile(t, filepath.Join(dir, name), []byte(text))
		}
		return dir
	}
	five := "a.png 0\na.png 1\na.png 2\na.png 3\na.png 4\n"
	for _, c := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"typo in a 5-class train list", map[string]string{"train800.txt": five + "a.png 77\n"}, []string{"train800.txt:6", "label 77", "without an example", ManifestFile}},
		{"huge label", map[string]string{"train800.txt": five + "a.png 99999999999\n"}, []string{"train800.txt:6", "label 99999999999", "limit"}},
		{"test label outside the train classes", map[string]string{"train800.txt": five, "test.txt": "a.png 1\na.png 77\n"}, []string{"test.txt:2", "label 77", "not a class of the task (0…4)"}},
		{"manifest class count", map[string]string{"train800.txt": five, "test.txt": "a.png 5\n", ManifestFile: `{"num_classes": 5}`}, []string{"test.txt:1", "label 5", "0…4"}},
		{"manifest class count too large", map[string]string{"train800.txt": five, ManifestFile: `{"num_classes": 1000000000000}`}, []string{ManifestFile, "num_classes"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Open(list(t, c.files))
			wantErr(t, err, c.want...)
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error of more than one line: %q", err)
			}
		})
	}
	// The class count comes from the task: a manifest's count even if a label is
	// absent; otherwise the training labels.
	d, err := Open(list(t, map[string]string{"train800.txt": "a.png 0\na.png 1\n", "test.txt": "a.png 1\n", ManifestFile: `{"num_classes": 4}`}))
	if err != nil || d.NumClasses() != 4 {
		t.Fatalf("manifest: %v, %d classes", err, d.NumClasses())
	}
	d, err = Open(list(t, map[string]string{"train800.txt": "a.png 0\na.png 2\n", "val200.txt": "a.png 1\n", "test.txt": "a.png 0\n"}))
	if err != nil || d.NumClasses() != 3 {
		t.Fatalf("lists: %v, %d classes", err, d.NumClasses())
	}
}

// IDX labels outside the training classes name the labels file and example.
func TestOpenIDXChecksLabels(t *testing.T) {
	dir := t.TempDir()
	writeIDXSplit(t, dir, "train", 2, 2, []int{0, 1, 2, 3, 4}, false)
	writeIDXSplit(t, dir, "t10k", 2, 2, []int{1, 200}, false)
	_, err := Open(dir)
	wantErr(t, err, "t10k-labels-idx1-ubyte", "example 1", "label 200", "0…4")
}

// pngHeader is the start of a PNG file declaring a w×h 8-bit gray image: enough for
// image.DecodeConfig, and nothing for a decoder to allocate from.
func pngHeader(w, h uint32) []byte {
	b := []byte("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32([]byte("IHDR"), w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 0, 0, 0, 0) // bit depth 8, gray, deflate, filter 0, no interlace
	b = binary.BigEndian.AppendUint32(b, 13)
	b = append(b, ihdr...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(ihdr))
}

// An image's size is checked from its header before it is decoded (a 30000 × 30000
// PNG is 900 MB decoded).
func TestImageSizeCheckedBeforeDecoding(t *testing.T) {
	dir := t.TempDir()
	writePNGFile(t, filepath.Join(dir, "ok.png"), grayImg(3, 2, 0))
	writeFile(t, filepath.Join(dir, "huge.png"), pngHeader(30000, 30000))
	writeFile(t, filepath.Join(dir, "wide.png"), pngHeader(MaxImageSide+1, 1))
	writeFile(t, filepath.Join(dir, "train800.txt"), []byte("ok.png 0\nhuge.png 1\nwide.png 1\n"))
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := d.Split("train")
	if _, err := s.Image(0); err != nil {
		t.Fatal(err)
	}
	_, err = s.Image(1)
	wantErr(t, err, "huge.png", "30000×30000", "over the limit")
	_, err = s.Image(2)
	wantErr(t, err, "wide.png", "16385×1")
}

// A model may declare any input size: sizes no model has are refused before a batch
// is allocated or a preprocessing is made for them.
func TestInputSizeLimits(t *testing.T) {
	for _, c := range [][3]int64{{3, 1 << 20, 1 << 20}, {1 << 40, 224, 224}, {3, 0, 224}, {-1, 2, 2}, {64, 16384, 16384}} {
		if _, err := InputPreprocess(c[0], c[1], c[2]); err == nil || !strings.Contains(err.Error(), "image input") {
			t.Errorf("input %v: %v", c, err)
		}
	}
	p, err := InputPreprocess(3, 224, 224)
	if err != nil || p.Channels != 3 || len(p.Mean) != 3 {
		t.Fatalf("3×224×224: %+v, %v", p, err)
	}
	if err := CheckPreprocess(meta.Preprocess{Channels: 3, Height: 1 << 20, Width: 1 << 20, Mean: []float32{0}, Std: []float32{1}}); err == nil {
		t.Error("CheckPreprocess accepted a 2^20 × 2^20 input")
	}
	if err := CheckBatch(1<<40, p); err == nil {
		t.Error("a batch of 2^40 images was accepted")
	}
	if err := CheckBatch(0, p); err == nil {
		t.Error("a batch of 0 images was accepted")
	}
	if err := CheckBatch(64, p); err != nil {
		t.Error(err)
	}
}
