package data

import (
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sptctl/sptctl/internal/scratch"
)

// Few-shot tasks FewShot can carve.
const (
	TaskClasses  = "classes"  // classify the chosen classes, relabelled from 0
	TaskRotation = "rotation" // predict k of a k·90° rotation (4 classes)
)

// ManifestFile is the file FewShot writes last into its output folder. It records how
// the folder was made, and marks the folder as a complete FewShot output that a later
// FewShot may replace.
const ManifestFile = "fewshot.json"

// FewShotOptions says which few-shot task FewShot writes.
type FewShotOptions struct {
	From    string // an IDX data folder (train-images-idx3-ubyte[.gz], …)
	Classes []int  // source classes to use, in new-label order; empty: all classes
	Train   int    // training examples (≥ 1), drawn from the IDX train split
	Val     int    // validation examples (≥ 0), drawn from the IDX train split, disjoint from Train
	Test    int    // test examples drawn from the IDX test split; 0: all of the classes' test images
	Task    string // TaskClasses (default) or TaskRotation
	Seed    int64
	Out     string // the folder to write
	Workers int    // PNG encoders (runtime.NumCPU() if ≤ 0)
}

// Manifest is the content of ManifestFile.
type Manifest struct {
	Format     string   `json:"format"` // "sptctl-fewshot-1"
	From       string   `json:"from"`   // absolute path of the IDX folder
	Task       string   `json:"task"`
	Classes    []int    `json:"classes"` // source classes used; for TaskClasses, new label i is Classes[i]
	NumClasses int      `json:"num_classes"`
	Train      int      `json:"train"`
	Val        int      `json:"val"`
	Test       int      `json:"test"`
	Seed       int64    `json:"seed"`
	Lists      []string `json:"lists"`
	// Source maps each split ("train", "val", "test") to the IDX indices of its
	// examples, in list order (train and val index the IDX train split, test the IDX
	// test split).
	Source map[string][]int `json:"source"`
}

// ParseClasses parses a class selection: comma-separated class numbers and inclusive
// ranges, e.g. "5-9", "0,2,4", "0-2,7". Order is kept; duplicates are an error.
func ParseClasses(s string) ([]int, error) {
	var out []int
	seen := map[int]bool{}
	add := func(c int) error {
		if seen[c] {
			return fmt.Errorf("classes %q: class %d given twice", s, c)
		}
		seen[c] = true
		out = append(out, c)
		return nil
	}
	num := func(t string) (int, error) {
		n, err := strconv.Atoi(strings.TrimSpace(t))
		if err != nil || n < 0 {
			return 0, fmt.Errorf("classes %q: %q is not a class number (0, 1, …)", s, strings.TrimSpace(t))
		}
		return n, nil
	}
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("classes: empty; want e.g. 5-9 or 0,2,4")
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("classes %q: empty item", s)
		}
		if a, b, ok := strings.Cut(part, "-"); ok {
			lo, err := num(a)
			if err != nil {
				return nil, err
			}
			hi, err := num(b)
			if err != nil {
				return nil, err
			}
			if hi < lo {
				return nil, fmt.Errorf("classes %q: range %d-%d is backwards", s, lo, hi)
			}
			for c := lo; c <= hi; c++ {
				if err := add(c); err != nil {
					return nil, err
				}
			}
			continue
		}
		c, err := num(part)
		if err != nil {
			return nil, err
		}
		if err := add(c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// FewShot writes a VTAB-1k-style task folder drawn from an IDX set:
// images/{train,val,test}/NNNNN.png, the lists train{Train}.txt, val{Val}.txt,
// train{Train}val{Val}.txt (the last two only if Val > 0) and test.txt, and
// ManifestFile.
//
// Train and val examples are drawn without replacement from the IDX train images of the
// chosen classes (a seeded shuffle of them: the first Train are train, the next Val are
// val); test examples likewise from the IDX test images (all of them if Test is 0).
// Each list is in source order. With TaskClasses, labels are the positions of the
// source classes in opt.Classes. With TaskRotation, each image is rotated
// counter-clockwise by k·90°, k drawn uniformly from 0…3 (seeded), and its label is k;
// rotating the PNG clockwise by label·90° gives the source image back. The same options
// give byte-identical output.
//
// The folder is built in Out+".tmp-*" beside Out and renamed into place. An existing Out
// is replaced only if it is empty or a complete earlier FewShot output (it has
// ManifestFile); anything else is refused.
func FewShot(opt FewShotOptions) error {
	task, out, err := checkFewShot(opt)
	if err != nil {
		return err
	}
	src, err := openFewShotSource(opt)
	if err != nil {
		return err
	}
	sel, labels := src.draw(opt, task)

	// Build in a temporary folder beside out.
	parent := filepath.Dir(out)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("fewshot: %w", err)
	}
	tmp, err := scratch.Mkdir(parent, filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("fewshot: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("fewshot: %w", err)
	}

	lists, err := writeTaskImages(tmp, src, sel, labels, task, opt.Workers)
	if err != nil {
		return err
	}
	if err := writeTaskFiles(tmp, opt, task, src.classes, sel, lists); err != nil {
		return err
	}

	// Move into place.
	if err := checkReplaceable(out); err != nil { // again: it may have changed meanwhile
		return err
	}
	old := ""
	if _, err := os.Lstat(out); err == nil {
		old = tmp + ".old"
		if err := os.Rename(out, old); err != nil {
			return fmt.Errorf("fewshot: %w", err)
		}
	}
	if err := os.Rename(tmp, out); err != nil {
		if old != "" {
			os.Rename(old, out)
		}
		return fmt.Errorf("fewshot: %w", err)
	}
	ok = true
	if old != "" {
		os.RemoveAll(old)
	}
	syncDir(parent)
	return nil
}

// checkFewShot checks FewShot's options and returns the task kind and the output
// folder.
func checkFewShot(opt FewShotOptions) (task, out string, err error) {
	task = opt.Task
	if task == "" {
		task = TaskClasses
	}
	if task != TaskClasses && task != TaskRotation {
		return "", "", fmt.Errorf("fewshot: task %q: want %s or %s", opt.Task, TaskClasses, TaskRotation)
	}
	if opt.Train < 1 || opt.Val < 0 || opt.Test < 0 {
		return "", "", fmt.Errorf("fewshot: want train ≥ 1, val ≥ 0, test ≥ 0 examples, got %d, %d, %d", opt.Train, opt.Val, opt.Test)
	}
	if opt.Out == "" {
		return "", "", fmt.Errorf("fewshot: no output folder")
	}
	out = filepath.Clean(opt.Out)
	if err := checkReplaceable(out); err != nil {
		return "", "", err
	}
	for i, c := range opt.Classes {
		if slices.Contains(opt.Classes[:i], c) {
			return "", "", fmt.Errorf("fewshot: class %d given twice", c)
		}
	}
	return task, out, nil
}

// fewShotSource is the IDX set FewShot draws from: its splits, the chosen classes
// (newLabel maps a source class to its task label) and the examples of those classes.
type fewShotSource struct {
	from                string
	train, test         *Split
	classes             []int
	newLabel            map[int]int
	trainPool, testPool []int
}

func openFewShotSource(opt FewShotOptions) (*fewShotSource, error) {
	ds, err := Open(opt.From)
	if err != nil {
		return nil, fmt.Errorf("fewshot: %w", err)
	}
	if ds.Layout != LayoutIDX {
		return nil, fmt.Errorf("fewshot: %s is a %s folder; want IDX files", opt.From, ds.Layout)
	}
	trainSplit, err := ds.Split("train")
	if err != nil {
		return nil, fmt.Errorf("fewshot: %w", err)
	}
	testSplit, err := ds.Split("test")
	if err != nil {
		return nil, fmt.Errorf("fewshot: %w", err)
	}
	classes := slices.Clone(opt.Classes)
	if len(classes) == 0 {
		for c := range ds.NumClasses() {
			classes = append(classes, c)
		}
	}
	newLabel := map[int]int{}
	for i, c := range classes {
		if c < 0 || c >= ds.NumClasses() {
			return nil, fmt.Errorf("fewshot: class %d: %s has classes 0…%d", c, opt.From, ds.NumClasses()-1)
		}
		if _, dup := newLabel[c]; dup {
			return nil, fmt.Errorf("fewshot: class %d given twice", c)
		}
		newLabel[c] = i
	}
	pool := func(s *Split) []int {
		var idx []int
		for i, l := range s.Labels() {
			if _, ok := newLabel[l]; ok {
				idx = append(idx, i)
			}
		}
		return idx
	}
	trainPool, testPool := pool(trainSplit), pool(testSplit)
	if need := opt.Train + opt.Val; need > len(trainPool) {
		return nil, fmt.Errorf("fewshot: want %d train + %d val = %d examples of classes %v, but the IDX train split has only %d of them",
			opt.Train, opt.Val, need, classes, len(trainPool))
	}
	if opt.Test > len(testPool) {
		return nil, fmt.Errorf("fewshot: want %d test examples of classes %v, but the IDX test split has only %d of them",
			opt.Test, classes, len(testPool))
	}
	if len(testPool) == 0 {
		return nil, fmt.Errorf("fewshot: the IDX test split has no examples of classes %v", classes)
	}

	return &fewShotSource{from: opt.From, train: trainSplit, test: testSplit, classes: classes, newLabel: newLabel,
		trainPool: trainPool, testPool: testPool}, nil
}

// draw picks the examples of each split (source indices, in source order) and their
// task labels.
func (src *fewShotSource) draw(opt FewShotOptions, task string) (sel, labels map[string][]int) {
	trainSplit, testSplit, trainPool, testPool, newLabel := src.train, src.test, src.trainPool, src.testPool, src.newLabel
	// Draw. Each random stream has its own PCG so that, e.g., the test draw does not
	// depend on the train counts.
	perm := func(stream uint64, xs []int) []int {
		o := order(len(xs), true, opt.Seed, int(stream))
		p := make([]int, len(xs))
		for i, j := range o {
			p[i] = xs[j]
		}
		return p
	}
	tv := perm(1, trainPool)
	sel = map[string][]int{
		"train": slices.Sorted(slices.Values(tv[:opt.Train])),
		"val":   slices.Sorted(slices.Values(tv[opt.Train : opt.Train+opt.Val])),
	}
	if opt.Test == 0 {
		sel["test"] = testPool
	} else {
		sel["test"] = slices.Sorted(slices.Values(perm(2, testPool)[:opt.Test]))
	}
	from := map[string]*Split{"train": trainSplit, "val": trainSplit, "test": testSplit}
	labels = map[string][]int{}
	rot := rand.NewPCG(splitmix(uint64(opt.Seed)), splitmix(3^0x9e3779b97f4a7c15))
	for _, sp := range fewShotSplits {
		ls := make([]int, len(sel[sp]))
		for i, ex := range sel[sp] {
			if task == TaskRotation {
				ls[i] = int(boundedUint64(rot, 4))
			} else {
				ls[i] = newLabel[from[sp].Label(ex)]
			}
		}
		labels[sp] = ls
	}

	return sel, labels
}

// fewShotSplits are a task folder's splits, in the order FewShot writes them.
var fewShotSplits = [...]string{"train", "val", "test"}

// writeTaskImages writes every selected image as images/SPLIT/NNNNN.png under tmp
// (rotated for TaskRotation), with workers encoders, and returns each split's list
// file text.
func writeTaskImages(tmp string, src *fewShotSource, sel, labels map[string][]int, task string, workers int) (map[string]string, error) {
	srcOf := map[string]*Split{"train": src.train, "val": src.train, "test": src.test}
	type pngJob struct {
		path string
		img  *image.Gray
		rot  int
	}
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	jobs := make(chan pngJob, workers*4)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if err := writePNG(j.path, rotateCCW(j.img, j.rot)); err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
				}
			}
		}()
	}
	lists := map[string]string{}
	for _, sp := range fewShotSplits {
		dir := filepath.Join(tmp, "images", sp)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			close(jobs)
			wg.Wait()
			return nil, fmt.Errorf("fewshot: %w", err)
		}
		var b strings.Builder
		for i, ex := range sel[sp] {
			name := fmt.Sprintf("%05d.png", i)
			img, _ := srcOf[sp].Image(ex) // IDX images never fail
			k := 0
			if task == TaskRotation {
				k = labels[sp][i]
			}
			jobs <- pngJob{filepath.Join(dir, name), img.(*image.Gray), k}
			fmt.Fprintf(&b, "images/%s/%s %d\n", sp, name, labels[sp][i])
		}
		lists[sp] = b.String()
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("fewshot: %w", firstErr)
	}

	return lists, nil
}

// writeTaskFiles writes the list files and the manifest into tmp.
func writeTaskFiles(tmp string, opt FewShotOptions, task string, classes []int, sel map[string][]int, lists map[string]string) error {
	files := []struct{ name, text string }{{fmt.Sprintf("train%d.txt", opt.Train), lists["train"]}}
	if opt.Val > 0 {
		files = append(files,
			struct{ name, text string }{fmt.Sprintf("val%d.txt", opt.Val), lists["val"]},
			struct{ name, text string }{fmt.Sprintf("train%dval%d.txt", opt.Train, opt.Val), lists["train"] + lists["val"]})
	}
	files = append(files, struct{ name, text string }{"test.txt", lists["test"]})
	absFrom, err := filepath.Abs(opt.From)
	if err != nil {
		absFrom = opt.From
	}
	man := Manifest{
		Format: "sptctl-fewshot-1", From: absFrom, Task: task, Classes: classes,
		Train: opt.Train, Val: opt.Val, Test: len(sel["test"]), Seed: opt.Seed,
		Source: map[string][]int{"train": sel["train"], "val": sel["val"], "test": sel["test"]},
	}
	if task == TaskRotation {
		man.NumClasses = 4
	} else {
		man.NumClasses = len(classes)
	}
	if opt.Val == 0 {
		delete(man.Source, "val")
	}
	for _, f := range files {
		man.Lists = append(man.Lists, f.name)
		if err := os.WriteFile(filepath.Join(tmp, f.name), []byte(f.text), 0o644); err != nil {
			return fmt.Errorf("fewshot: %w", err)
		}
	}
	mj, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return fmt.Errorf("fewshot: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ManifestFile), append(mj, '\n'), 0o644); err != nil {
		return fmt.Errorf("fewshot: %w", err)
	}
	if err := syncDir(tmp); err != nil {
		return fmt.Errorf("fewshot: %w", err)
	}

	return nil
}

// checkReplaceable returns nil if out does not exist, is an empty folder, or is an
// earlier FewShot output holding nothing but what FewShot wrote (ManifestFile, the
// lists it names, images/{train,val,test}/NNNNN.png): files a user added to a task
// folder are never deleted.
func checkReplaceable(out string) error {
	st, err := os.Lstat(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fewshot: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("fewshot: output %s exists and is not a folder", out)
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		return fmt.Errorf("fewshot: %w", err)
	}
	if len(entries) == 0 {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(out, ManifestFile))
	if err != nil {
		return fmt.Errorf("fewshot: refusing to overwrite %s: it is not empty and not an earlier `sptctl data fewshot` output (no %s); remove it or choose another output folder",
			out, ManifestFile)
	}
	var man Manifest
	if err := json.Unmarshal(b, &man); err != nil || man.Format != "sptctl-fewshot-1" {
		return fmt.Errorf("fewshot: refusing to overwrite %s: its %s is not one `sptctl data fewshot` wrote; remove it or choose another output folder", out, ManifestFile)
	}
	if foreign := foreignFile(out, &man); foreign != "" {
		return fmt.Errorf("fewshot: refusing to overwrite %s: it holds %s, which `sptctl data fewshot` did not write; move it away or choose another output folder", out, foreign)
	}
	return nil
}

// foreignFile is the first file or folder under out (an earlier FewShot output) that
// FewShot does not write, or "".
func foreignFile(out string, man *Manifest) string {
	ours := map[string]bool{ManifestFile: true, "images": true}
	for _, l := range man.Lists {
		ours[l] = true
	}
	splits := map[string]bool{"train": true, "val": true, "test": true}
	foreign := ""
	filepath.WalkDir(out, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			foreign = path
			return filepath.SkipAll
		}
		rel, _ := filepath.Rel(out, path)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		ok := false
		switch {
		case rel == ".":
			return nil
		case len(parts) == 1:
			ok = ours[parts[0]] && (parts[0] == "images") == d.IsDir()
		case len(parts) == 2:
			ok = parts[0] == "images" && splits[parts[1]] && d.IsDir()
		case len(parts) == 3:
			ok = parts[0] == "images" && fewShotImage.MatchString(parts[2]) && d.Type().IsRegular()
		}
		if !ok {
			foreign = path
			return filepath.SkipAll
		}
		return nil
	})
	return foreign
}

// fewShotImage is the name of an image FewShot writes.
var fewShotImage = regexp.MustCompile(`^[0-9]{5,}\.png$`)

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func writePNG(path string, img image.Image) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// rotateCCW returns img rotated counter-clockwise by k·90° (k mod 4), as numpy's
// rot90(img, k) does.
func rotateCCW(img *image.Gray, k int) *image.Gray {
	k = ((k % 4) + 4) % 4
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	at := func(x, y int) uint8 { return img.Pix[y*img.Stride+x] }
	var out *image.Gray
	if k%2 == 0 {
		out = image.NewGray(image.Rect(0, 0, w, h))
	} else {
		out = image.NewGray(image.Rect(0, 0, h, w))
	}
	ow := out.Bounds().Dx()
	for y := range out.Bounds().Dy() {
		for x := range ow {
			var v uint8
			switch k {
			case 0:
				v = at(x, y)
			case 1: // CCW 90: out(x, y) = in(w-1-y, x)
				v = at(w-1-y, x)
			case 2:
				v = at(w-1-x, h-1-y)
			case 3: // CW 90: out(x, y) = in(y, h-1-x)
				v = at(y, h-1-x)
			}
			out.Pix[y*out.Stride+x] = v
		}
	}
	return out
}
