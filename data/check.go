package data

import (
	"bufio"
	"fmt"
	"image"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/sptctl/sptctl/internal/meta"
)

// Limits on sizes read from files, checked before anything of that size is allocated.
const (
	// MaxClasses is the largest class count a data set may have (inject.MaxClasses is
	// the same limit for plans).
	MaxClasses = 100_000
	// MaxImageSide and MaxImagePixels bound an image file's declared size, checked with
	// image.DecodeConfig before it is decoded (8192 × 8192 is 256 MiB decoded as RGBA,
	// the preprocessing's float planes three times that).
	MaxImageSide   = 16384
	MaxImagePixels = 8192 * 8192
	// MaxInputChannels and MaxInputValues bound a model's declared image input (one
	// preprocessed image is C×H×W float32s; a batch is that times the batch size).
	MaxInputChannels = 64
	MaxInputValues   = 1 << 26
)

// setClasses decides the data set's class count from the task and checks every label
// against it, naming the file (and line) of the first label outside it:
//
//   - ImageFolder: the class folders (labels are in range by construction).
//   - A folder with a FewShot manifest (fewshot.json, VTAB-1k lists or not): its
//     num_classes.
//   - Otherwise (VTAB-1k lists without a manifest, IDX files): the largest label of the
//     training splits (train…, val…) plus one, or of all splits if none is one. Labels of
//     the other splits must be below it; and, as a guard against a typo such as 77 in a
//     5-class list, the training labels must cover at least half of 0…K−1.
func (d *Dataset) setClasses() error {
	switch {
	case d.Layout == LayoutImageFolder:
		d.numClasses = len(d.Classes)
	case d.classes != 0:
		if d.classes < 1 || d.classes > MaxClasses {
			return fmt.Errorf("data %s: %s: num_classes %d: want 1 to %d", d.Dir, ManifestFile, d.classes, MaxClasses)
		}
		d.numClasses = d.classes
	default:
		names := d.Splits()
		var defining []*Split
		for _, n := range names {
			if strings.HasPrefix(n, "train") || strings.HasPrefix(n, "val") {
				defining = append(defining, d.splits[n])
			}
		}
		if len(defining) == 0 {
			for _, n := range names {
				defining = append(defining, d.splits[n])
			}
		}
		top, at := -1, (*Split)(nil)
		seen := map[int]bool{}
		for _, s := range defining {
			for i, l := range s.labels {
				if l >= MaxClasses {
					return s.labelError(i, fmt.Sprintf("is over the limit of %d classes", MaxClasses))
				}
				seen[l] = true
				if l > top {
					top, at = l, s
				}
			}
		}
		d.numClasses = top + 1
		if top >= 0 && 2*len(seen) < d.numClasses {
			i := slicesIndex(at.labels, top)
			return at.labelError(i, fmt.Sprintf("leaves %d of the classes 0…%d without an example; if the task really has %d classes, "+
				"record \"num_classes\": %d in %s", d.numClasses-len(seen), top, d.numClasses, d.numClasses, ManifestFile))
		}
	}
	names := d.Splits()
	sort.Strings(names) // the same first error every time
	for _, n := range names {
		s := d.splits[n]
		for i, l := range s.labels {
			if l >= d.numClasses {
				return s.labelError(i, fmt.Sprintf("is not a class of the task (0…%d)", d.numClasses-1))
			}
		}
	}
	return nil
}

func slicesIndex(xs []int, x int) int {
	for i, y := range xs {
		if y == x {
			return i
		}
	}
	return -1
}

// labelError is an error naming where example i's label comes from.
func (s *Split) labelError(i int, what string) error {
	switch {
	case s.lines != nil:
		return fmt.Errorf("%s:%d: label %d %s", s.src, s.lines[i], s.labels[i], what)
	case s.src != "":
		return fmt.Errorf("%s: example %d: label %d %s", s.src, i, s.labels[i], what)
	}
	return fmt.Errorf("%s: label %d %s", s.Name(i), s.labels[i], what)
}

// decodeImage decodes an image file after checking, from its header, that its size is
// within MaxImageSide and MaxImagePixels.
func decodeImage(f *os.File, name string) (image.Image, error) {
	cfg, _, err := image.DecodeConfig(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", name, err)
	}
	if cfg.Width > MaxImageSide || cfg.Height > MaxImageSide || int64(cfg.Width)*int64(cfg.Height) > MaxImagePixels {
		return nil, fmt.Errorf("decode %s: image of %d×%d pixels is over the limit (%d pixels a side, %d in all)", name, cfg.Width, cfg.Height, MaxImageSide, MaxImagePixels)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("decode %s: %w", name, err)
	}
	img, _, err := image.Decode(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", name, err)
	}
	return img, nil
}

// CheckInputSize refuses an image input of channels × height × width that no model
// has, before anything of that size is allocated: a model file may declare any size.
func CheckInputSize(channels, height, width int64) error {
	if channels < 1 || height < 1 || width < 1 {
		return fmt.Errorf("image input %d×%d×%d: channels, height and width must be positive", channels, height, width)
	}
	if channels > MaxInputChannels || height > MaxImageSide || width > MaxImageSide || channels*height*width > MaxInputValues {
		return fmt.Errorf("image input %d×%d×%d is over the limit (%d channels, %d pixels a side, %d values an image)",
			channels, height, width, MaxInputChannels, MaxImageSide, MaxInputValues)
	}
	return nil
}

// InputPreprocess is DefaultPreprocess for a model's declared image input, after
// CheckInputSize.
func InputPreprocess(channels, height, width int64) (meta.Preprocess, error) {
	if err := CheckInputSize(channels, height, width); err != nil {
		return meta.Preprocess{}, err
	}
	return DefaultPreprocess(int(channels), int(height), int(width)), nil
}

// MaxBatchValues bounds one batch of preprocessed images (batch × C×H×W float32s,
// 8 GiB), so a model's fixed batch size or a flag cannot ask for more memory than a
// machine has before anything is read.
const MaxBatchValues = 1 << 31

// CheckBatch refuses a batch size below 1 or one whose batch of p-preprocessed images
// is over MaxBatchValues.
func CheckBatch(batch int64, p meta.Preprocess) error {
	size := int64(TensorSize(p))
	if batch < 1 || size < 1 || batch > MaxBatchValues/size {
		return fmt.Errorf("batch size %d of %d×%d×%d images: want 1 to %d", batch, p.Channels, p.Height, p.Width, MaxBatchValues/max(size, 1))
	}
	return nil
}
