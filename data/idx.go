package data

import (
	"bufio"
	"cmp"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"
)

// idxFileRE matches the IDX file names Open recognises (MNIST's own, and the variant
// with a dot before "idx").
var idxFileRE = regexp.MustCompile(`^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$`)

// idxImages holds the images of one IDX split in memory (n × rows × cols bytes).
type idxImages struct {
	n, rows, cols int
	pix           []byte
}

func (m *idxImages) image(i int) *image.Gray {
	sz := m.rows * m.cols
	img := image.NewGray(image.Rect(0, 0, m.cols, m.rows))
	copy(img.Pix, m.pix[i*sz:(i+1)*sz])
	return img
}

// findIDX returns the path of the IDX file for prefix ("train"/"t10k") and kind
// ("images"/"labels"), or "" if there is none.
func findIDX(dir, prefix, kind string) string {
	dims := "idx3"
	if kind == "labels" {
		dims = "idx1"
	}
	for _, sep := range []string{"-", "."} {
		for _, ext := range []string{"", ".gz"} {
			p := filepath.Join(dir, prefix+"-"+kind+sep+dims+"-ubyte"+ext)
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p
			}
		}
	}
	return ""
}

func openIDX(dir string) (*Dataset, error) {
	d := &Dataset{Layout: LayoutIDX, splits: map[string]*Split{}}
	type part struct {
		name             string
		imgPath, labPath string
		imgs             *idxImages
		labs             []int
		imgErr, labErr   error
	}
	var parts []*part
	for _, sp := range []struct{ prefix, name string }{{"train", "train"}, {"t10k", "test"}} {
		imgPath, labPath := findIDX(dir, sp.prefix, "images"), findIDX(dir, sp.prefix, "labels")
		if imgPath == "" && labPath == "" {
			continue
		}
		if imgPath == "" {
			return nil, fmt.Errorf("data %s: %s has no images file (%s-images-idx3-ubyte[.gz])", dir, filepath.Base(labPath), sp.prefix)
		}
		if labPath == "" {
			return nil, fmt.Errorf("data %s: %s has no labels file (%s-labels-idx1-ubyte[.gz])", dir, filepath.Base(imgPath), sp.prefix)
		}
		parts = append(parts, &part{name: sp.name, imgPath: imgPath, labPath: labPath})
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("data %s: no IDX image/label file pair (train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz], or t10k-…)", dir)
	}
	// Read the files concurrently: gunzipping the images is most of Open's time.
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Add(2)
		go func() { defer wg.Done(); p.imgs, p.imgErr = readIDXImages(p.imgPath) }()
		go func() { defer wg.Done(); p.labs, p.labErr = readIDXLabels(p.labPath) }()
	}
	wg.Wait()
	for _, p := range parts {
		if err := cmp.Or(p.imgErr, p.labErr); err != nil {
			return nil, err
		}
		if len(p.labs) != p.imgs.n {
			return nil, fmt.Errorf("data: %s has %d images but %s has %d labels",
				filepath.Base(p.imgPath), p.imgs.n, filepath.Base(p.labPath), len(p.labs))
		}
		d.splits[p.name] = &Split{name: p.name, dir: dir, labels: p.labs, idx: p.imgs, src: filepath.Base(p.labPath)}
	}
	return d, nil
}

// readIDX reads a whole IDX file (gunzipping it if it starts with the gzip magic) and
// checks its header: unsigned bytes, ndims dimensions, and exactly as many data bytes
// as the dimensions say. It returns the dimensions and the data.
func readIDX(path string, ndims int) ([]int, []byte, error) {
	name := filepath.Base(path)
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	var r io.Reader = br
	zipped := false
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: gzip: %w", name, err)
		}
		r, zipped = zr, true
	}
	readErr := func(what string, err error) error {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			if zipped {
				return fmt.Errorf("%s: truncated gzip stream (%s): %w", name, what, io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("%s: truncated: %s", name, what)
		}
		if zipped {
			return fmt.Errorf("%s: gzip: %w", name, err)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	var magic [4]byte
	if n, err := io.ReadFull(r, magic[:]); err != nil {
		return nil, nil, readErr(fmt.Sprintf("%d bytes, no IDX header", n), err)
	}
	if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || int(magic[3]) != ndims {
		return nil, nil, fmt.Errorf("%s: bad magic %02x %02x %02x %02x: want 00 00 08 %02x (IDX, unsigned bytes, %d dimensions)",
			name, magic[0], magic[1], magic[2], magic[3], ndims, ndims)
	}
	hdr := make([]byte, 4*ndims)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, nil, readErr(fmt.Sprintf("header needs %d bytes", 4+len(hdr)), err)
	}
	dims := make([]int, ndims)
	size := 1
	for i := range dims {
		dims[i] = int(binary.BigEndian.Uint32(hdr[4*i:]))
		if dims[i] > 0 && size > (1<<36)/dims[i] {
			return nil, nil, fmt.Errorf("%s: dimensions %v too large", name, dims)
		}
		size *= dims[i]
	}
	data := make([]byte, size)
	if n, err := io.ReadFull(r, data); err != nil {
		return nil, nil, readErr(fmt.Sprintf("dimensions %v need %d data bytes, file has %d", dims, size, n), err)
	}
	// Nothing may follow (and a gzip stream must end with a valid checksum).
	var one [1]byte
	if n, err := io.ReadFull(r, one[:]); n > 0 {
		return nil, nil, fmt.Errorf("%s: trailing data after dimensions %v", name, dims)
	} else if err != io.EOF {
		return nil, nil, readErr("checksum", err)
	}
	return dims, data, nil
}

func readIDXImages(path string) (*idxImages, error) {
	dims, pix, err := readIDX(path, 3)
	if err != nil {
		return nil, err
	}
	if dims[1] == 0 || dims[2] == 0 {
		return nil, fmt.Errorf("%s: empty images %d×%d", filepath.Base(path), dims[1], dims[2])
	}
	return &idxImages{n: dims[0], rows: dims[1], cols: dims[2], pix: pix}, nil
}

func readIDXLabels(path string) ([]int, error) {
	_, b, err := readIDX(path, 1)
	if err != nil {
		return nil, err
	}
	labs := make([]int, len(b))
	for i, v := range b {
		labs[i] = int(v)
	}
	return labs, nil
}
