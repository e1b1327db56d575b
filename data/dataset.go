package data

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image"
	_ "image/jpeg" // register the JPEG decoder for image.Decode
	_ "image/png"  // register the PNG decoder for image.Decode
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Layouts a data folder can have (Dataset.Layout).
const (
	LayoutVTAB        = "vtab1k"
	LayoutImageFolder = "imagefolder"
	LayoutIDX         = "idx"
)

// Dataset is an opened data folder: a set of named splits of labelled images.
type Dataset struct {
	Dir    string // the folder given to Open
	Layout string // LayoutVTAB, LayoutImageFolder or LayoutIDX
	// Classes holds the class folder names of an ImageFolder tree, in label order
	// (nil for the other layouts, whose labels are plain integers).
	Classes []string

	splits     map[string]*Split
	aliases    map[string][]string // alias -> the splits it could name (used if exactly one)
	classes    int                 // class count a FewShot manifest declares (0 if none)
	numClasses int                 // the task's class count (see setClasses)
}

// Split is one split of a dataset: a list of (image, label) pairs. Its methods are safe
// for concurrent use.
type Split struct {
	name   string
	dir    string   // base folder of paths
	paths  []string // as written (list files) or relative to dir (ImageFolder)
	labels []int
	idx    *idxImages // IDX splits: the images, in memory
	src    string     // the file the labels come from (list or IDX labels), for messages
	lines  []int      // list splits: the line of each example in src
}

// Open reads the data folder dir, detecting its layout (see the package
// documentation). It checks every listed image file exists, but decodes images only
// when asked (Split.Image).
func Open(dir string) (*Dataset, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("data: %s is not a folder", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	var lists []string
	hasIDX := false
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() && listFileRE.MatchString(n) {
			lists = append(lists, n)
		}
		if !e.IsDir() && idxFileRE.MatchString(n) {
			hasIDX = true
		}
	}
	var d *Dataset
	switch {
	case len(lists) > 0:
		d, err = openVTAB(dir, lists)
	case hasIDX:
		d, err = openIDX(dir)
	default:
		d, err = openImageFolder(dir)
	}
	if err != nil {
		return nil, err
	}
	d.Dir = dir
	if err := d.setClasses(); err != nil {
		return nil, err
	}
	return d, nil
}

// Splits returns the names of the dataset's splits (aliases such as "train" for
// "train800" not included), train splits first, then val, trainval, test, others.
func (d *Dataset) Splits() []string {
	names := make([]string, 0, len(d.splits))
	for n := range d.splits {
		names = append(names, n)
	}
	sortSplitNames(names)
	return names
}

// Split returns the split called name, or the one an alias names ("train" → "train800",
// "val" → "val200", "trainval" → "train800val200" in a VTAB-1k folder).
func (d *Dataset) Split(name string) (*Split, error) {
	if s, ok := d.splits[name]; ok {
		return s, nil
	}
	if cands := d.aliases[name]; len(cands) == 1 {
		return d.splits[cands[0]], nil
	} else if len(cands) > 1 {
		sortSplitNames(cands)
		return nil, fmt.Errorf("data %s: split %q is ambiguous: it could be %s", d.Dir, name, strings.Join(cands, ", "))
	}
	return nil, fmt.Errorf("data %s (%s): no split %q; it has %s", d.Dir, d.Layout, name, strings.Join(d.Splits(), ", "))
}

// NumClasses returns the task's number of classes: the class folders of an ImageFolder
// tree, the num_classes of a FewShot manifest (ManifestFile; a rotation task has 4
// classes even if a small draw lacks label 3), else the largest training label plus one
// (see Open). Every label of every split is below it.
func (d *Dataset) NumClasses() int {
	return d.numClasses
}

// SplitName returns the name of the split ("train800", "test", …).
func (s *Split) SplitName() string { return s.name }

// Len returns the number of examples.
func (s *Split) Len() int { return len(s.labels) }

// Label returns the label of example i.
func (s *Split) Label(i int) int { return s.labels[i] }

// Labels returns all labels, in example order. The slice must not be modified.
func (s *Split) Labels() []int { return s.labels }

// Name returns a name for example i to use in messages: its path as listed (VTAB-1k),
// its path relative to the data folder (ImageFolder), or "idx:N" (IDX).
func (s *Split) Name(i int) string {
	if s.idx != nil {
		return "idx:" + strconv.Itoa(i)
	}
	return s.paths[i]
}

// Image decodes example i: PNG or JPEG files, *image.Gray for IDX sets.
func (s *Split) Image(i int) (image.Image, error) {
	if s.idx != nil {
		return s.idx.image(i), nil
	}
	p := s.paths[i]
	f, err := os.Open(s.path(i))
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", p, err)
	}
	defer f.Close()
	return decodeImage(f, p)
}

func (s *Split) path(i int) string {
	p := filepath.FromSlash(s.paths[i])
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(s.dir, p)
}

// ---- VTAB-1k lists ----

// listFileRE matches the list file names: trainN, valN, trainNvalM (numbers optional)
// and test.
var listFileRE = regexp.MustCompile(`^(train[0-9]*(val[0-9]*)?|val[0-9]*|test)\.txt$`)

func openVTAB(dir string, lists []string) (*Dataset, error) {
	d := &Dataset{Layout: LayoutVTAB, splits: map[string]*Split{}, aliases: map[string][]string{}}
	for _, file := range lists {
		name := strings.TrimSuffix(file, ".txt")
		s, err := readList(dir, file)
		if err != nil {
			return nil, err
		}
		s.name = name
		d.splits[name] = s
		var alias string
		switch {
		case strings.HasPrefix(name, "train") && strings.Contains(name, "val"):
			alias = "trainval"
		case strings.HasPrefix(name, "train"):
			alias = "train"
		case strings.HasPrefix(name, "val"):
			alias = "val"
		}
		if alias != "" && alias != name {
			d.aliases[alias] = append(d.aliases[alias], name)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, ManifestFile)); err == nil {
		var m Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("data: %s: %w", ManifestFile, err)
		}
		d.classes = m.NumClasses
	}
	return d, nil
}

// readList reads one list file; errors name the file and line.
func readList(dir, file string) (*Split, error) {
	f, err := os.Open(filepath.Join(dir, file))
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	s := &Split{dir: dir, src: file}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		cut := strings.LastIndexAny(text, " \t")
		if cut < 0 {
			return nil, fmt.Errorf("%s:%d: want `PATH LABEL`, got %q", file, line, text)
		}
		path, lab := strings.TrimSpace(text[:cut]), text[cut+1:]
		label, err := strconv.Atoi(lab)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: label %q is not an integer", file, line, lab)
		}
		if label < 0 {
			return nil, fmt.Errorf("%s:%d: label %d is negative", file, line, label)
		}
		s.paths = append(s.paths, path)
		s.labels = append(s.labels, label)
		s.lines = append(s.lines, line)
		full := s.path(len(s.paths) - 1)
		st, err := os.Stat(full)
		if err != nil {
			if os.IsNotExist(err) {
				return nil, fmt.Errorf("%s:%d: image %s does not exist (looked for %s)", file, line, path, full)
			}
			return nil, fmt.Errorf("%s:%d: %w", file, line, err)
		}
		if st.IsDir() {
			return nil, fmt.Errorf("%s:%d: image %s is a folder", file, line, path)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", file, line+1, err)
	}
	return s, nil
}

// ---- ImageFolder ----

var imageFolderSplits = []string{"train", "val", "test"}

func isImageFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".png", ".jpg", ".jpeg":
		return true
	}
	return false
}

// classDirs lists the class folders of one split folder, sorted.
func classDirs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	var classes []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			classes = append(classes, e.Name())
		}
	}
	sort.Strings(classes)
	return classes, nil
}

func openImageFolder(dir string) (*Dataset, error) {
	d := &Dataset{Layout: LayoutImageFolder, splits: map[string]*Split{}}
	var present []string
	for _, sp := range imageFolderSplits {
		if st, err := os.Stat(filepath.Join(dir, sp)); err == nil && st.IsDir() {
			present = append(present, sp)
		}
	}
	if len(present) == 0 {
		return nil, fmt.Errorf("data %s: no data found: want VTAB-1k list files (train800.txt, val200.txt, train800val200.txt, test.txt), "+
			"IDX files (train-images-idx3-ubyte[.gz], …) or ImageFolder split folders (train/<class>/*.png, val/…, test/…)", dir)
	}
	// Classes come from the train split; without one (an evaluation-only folder), from
	// the union of the class folders of the splits there are.
	if present[0] == "train" {
		cl, err := classDirs(filepath.Join(dir, "train"))
		if err != nil {
			return nil, err
		}
		d.Classes = cl
	} else {
		seen := map[string]bool{}
		for _, sp := range present {
			cl, err := classDirs(filepath.Join(dir, sp))
			if err != nil {
				return nil, err
			}
			for _, c := range cl {
				if !seen[c] {
					seen[c] = true
					d.Classes = append(d.Classes, c)
				}
			}
		}
		sort.Strings(d.Classes)
	}
	index := map[string]int{}
	for i, c := range d.Classes {
		index[c] = i
	}
	for _, sp := range present {
		cl, err := classDirs(filepath.Join(dir, sp))
		if err != nil {
			return nil, err
		}
		s := &Split{name: sp, dir: dir}
		for _, c := range cl {
			label, ok := index[c]
			if !ok {
				return nil, fmt.Errorf("data %s: class folder %s/%s is not a class of the train split (which has %d: %s)",
					dir, sp, c, len(d.Classes), abbreviate(d.Classes, 10))
			}
			root := filepath.Join(dir, sp, c)
			err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if e.IsDir() {
					if path != root && strings.HasPrefix(e.Name(), ".") {
						return filepath.SkipDir
					}
					return nil
				}
				if strings.HasPrefix(e.Name(), ".") || !isImageFile(e.Name()) {
					return nil
				}
				rel, err := filepath.Rel(dir, path)
				if err != nil {
					return err
				}
				s.paths = append(s.paths, filepath.ToSlash(rel))
				s.labels = append(s.labels, label)
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("data: %w", err)
			}
		}
		d.splits[sp] = s
	}
	return d, nil
}

func abbreviate(xs []string, n int) string {
	if len(xs) <= n {
		return strings.Join(xs, ", ")
	}
	return strings.Join(xs[:n], ", ") + fmt.Sprintf(", … (%d more)", len(xs)-n)
}

// sortSplitNames orders split names: train…, val…, trainval…, test, then the rest,
// by name within a kind.
func sortSplitNames(names []string) {
	rank := func(n string) int {
		switch {
		case strings.HasPrefix(n, "train") && strings.Contains(n, "val"):
			return 2
		case strings.HasPrefix(n, "train"):
			return 0
		case strings.HasPrefix(n, "val"):
			return 1
		case n == "test":
			return 3
		}
		return 4
	}
	sort.Slice(names, func(i, j int) bool {
		ri, rj := rank(names[i]), rank(names[j])
		if ri != rj {
			return ri < rj
		}
		return names[i] < names[j]
	})
}
