package data

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/internal/meta"
)

func close32(t *testing.T, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("len %d, want %d", len(got), len(want))
	}
	for i := range got {
		if math.Abs(float64(got[i]-want[i])) > tol {
			t.Fatalf("value %d: got %v, want %v\n got  %v\n want %v", i, got[i], want[i], got, want)
		}
	}
}

// A 2×2 gray image to a 3-channel 2×2 input: no resampling, gray repeated, normalised
// per channel. Hand-computed.
func TestTensorGray2x2(t *testing.T) {
	g := image.NewGray(image.Rect(0, 0, 2, 2))
	copy(g.Pix, []uint8{0, 51, 102, 255}) // 0, 0.2, 0.4, 1
	p := meta.Preprocess{Channels: 3, Height: 2, Width: 2, Mean: []float32{0, 0.5, 0.2}, Std: []float32{1, 0.5, 0.4}}
	dst := make([]float32, 12)
	Tensor(g, p, dst)
	want := []float32{
		0, 0.2, 0.4, 1, // (x-0)/1
		-1, -0.6, -0.2, 1, // (x-0.5)/0.5
		-0.5, 0, 0.5, 2, // (x-0.2)/0.4
	}
	close32(t, dst, want, 1e-6)
}

// RGB to one channel by luma, 2×2.
func TestTensorRGBToLuma(t *testing.T) {
	m := image.NewNRGBA(image.Rect(0, 0, 2, 2))
	m.SetNRGBA(0, 0, color.NRGBA{255, 0, 0, 255})
	m.SetNRGBA(1, 0, color.NRGBA{0, 255, 0, 255})
	m.SetNRGBA(0, 1, color.NRGBA{0, 0, 255, 255})
	m.SetNRGBA(1, 1, color.NRGBA{255, 255, 255, 10}) // alpha is dropped
	dst := make([]float32, 4)
	Tensor(m, meta.Preprocess{Channels: 1, Height: 2, Width: 2, Mean: []float32{0}, Std: []float32{1}}, dst)
	close32(t, dst, []float32{0.299, 0.587, 0.114, 1}, 1e-6)

	// The same image as RGB, 3 channels, ImageNet normalisation.
	dst = make([]float32, 12)
	p := DefaultPreprocess(3, 2, 2)
	Tensor(m, p, dst)
	want := []float32{
		(1 - 0.485) / 0.229, (0 - 0.485) / 0.229, (0 - 0.485) / 0.229, (1 - 0.485) / 0.229,
		(0 - 0.456) / 0.224, (1 - 0.456) / 0.224, (0 - 0.456) / 0.224, (1 - 0.456) / 0.224,
		(0 - 0.406) / 0.225, (0 - 0.406) / 0.225, (1 - 0.406) / 0.225, (1 - 0.406) / 0.225,
	}
	close32(t, dst, want, 1e-5)
}

// Resizing, hand-computed: 2×2 → 4×4 is bilinear with half-pixel centres (each row
// a, .75a+.25b, .25a+.75b, b); 2×2 → 1×1 averages the four pixels.
func TestTensorResize2x2(t *testing.T) {
	g := image.NewGray(image.Rect(0, 0, 2, 2))
	copy(g.Pix, []uint8{0, 255, 255, 255}) // 0 1 / 1 1
	p := meta.Preprocess{Channels: 1, Height: 4, Width: 4, Mean: []float32{0}, Std: []float32{1}}
	dst := make([]float32, 16)
	Tensor(g, p, dst)
	row0 := []float32{0, 0.25, 0.75, 1}
	lerp := func(a, b []float32, w float32) []float32 {
		o := make([]float32, len(a))
		for i := range a {
			o[i] = (1-w)*a[i] + w*b[i]
		}
		return o
	}
	row3 := []float32{1, 1, 1, 1}
	var want []float32
	want = append(want, row0...)
	want = append(want, lerp(row0, row3, 0.25)...)
	want = append(want, lerp(row0, row3, 0.75)...)
	want = append(want, row3...)
	close32(t, dst, want, 1e-6)

	dst = make([]float32, 1)
	Tensor(g, meta.Preprocess{Channels: 1, Height: 1, Width: 1, Mean: []float32{0.5}, Std: []float32{0.5}}, dst)
	close32(t, dst, []float32{(0.75 - 0.5) / 0.5}, 1e-6)
}

func TestTensorChecks(t *testing.T) {
	for _, p := range []meta.Preprocess{
		{Channels: 0, Height: 2, Width: 2},
		{Channels: 3, Height: 2, Width: 2, Mean: []float32{0, 0}, Std: []float32{1, 1, 1}},
		{Channels: 1, Height: 2, Width: 2, Mean: []float32{0}, Std: []float32{0}},
	} {
		if CheckPreprocess(p) == nil {
			t.Fatalf("%+v accepted", p)
		}
	}
	if err := CheckPreprocess(DefaultPreprocess(1, 28, 28)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		img  image.Image
		p    meta.Preprocess
		n    int
		want string
	}{
		{grayImg(2, 2, 0), DefaultPreprocess(1, 2, 2), 3, "destination has 3 values"},
		{rgbImg(2, 2, color.NRGBA{}), DefaultPreprocess(2, 2, 2), 8, "cannot map an RGB image to 2 channels"},
		{grayImg(2, 2, 0), meta.Preprocess{Channels: 1, Height: 2, Width: 2}, 4, "mean"},
		{image.NewGray(image.Rect(0, 0, 0, 2)), DefaultPreprocess(1, 2, 2), 4, "image of 0×2 pixels"},
		{image.NewGray(image.Rect(0, 0, MaxImageSide+1, 1)), DefaultPreprocess(1, 2, 2), 4, "image of 16385×1 pixels"},
	} {
		dst := make([]float32, c.n)
		if err := Tensor(c.img, c.p, dst); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
	// Gray repeats to any channel count.
	dst := make([]float32, 8)
	Tensor(grayImg(2, 2, 0), DefaultPreprocess(2, 2, 2), dst)
	if dst[0] != dst[4] || dst[3] != dst[7] {
		t.Fatalf("channels differ: %v", dst)
	}
}

// Every image type Tensor converts gives the same values for the same picture.
func TestTensorImageTypes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	src := image.NewNRGBA(image.Rect(0, 0, 5, 3))
	for i := range src.Pix {
		src.Pix[i] = uint8(r.IntN(256))
		if i%4 == 3 {
			src.Pix[i] = 255
		}
	}
	rgba := image.NewRGBA(src.Bounds())
	rgba64 := image.NewRGBA64(src.Bounds())
	pal := image.NewPaletted(src.Bounds(), nil)
	for y := range 3 {
		for x := range 5 {
			rgba.Set(x, y, src.At(x, y))
			rgba64.Set(x, y, src.At(x, y))
		}
	}
	for y := range 3 {
		for x := range 5 {
			pal.Palette = append(pal.Palette, src.At(x, y))
			pal.SetColorIndex(x, y, uint8(len(pal.Palette)-1))
		}
	}
	// A sub-image with an offset origin.
	big := image.NewNRGBA(image.Rect(0, 0, 9, 9))
	sub := big.SubImage(image.Rect(2, 3, 7, 6)).(*image.NRGBA)
	for y := range 3 {
		for x := range 5 {
			sub.Set(2+x, 3+y, src.At(x, y))
		}
	}
	p := DefaultPreprocess(3, 4, 7)
	want := make([]float32, TensorSize(p))
	Tensor(src, p, want)
	for _, img := range []image.Image{rgba, rgba64, pal, sub} {
		got := make([]float32, TensorSize(p))
		if err := Tensor(img, p, got); err != nil {
			t.Fatal(err)
		}
		close32(t, got, want, 1e-6)
	}
	// Gray and Gray16 and a gray sub-image agree.
	g := grayImg(4, 3, 5)
	g16 := image.NewGray16(g.Bounds())
	for y := range 3 {
		for x := range 4 {
			g16.Set(x, y, g.At(x, y))
		}
	}
	gbig := image.NewGray(image.Rect(0, 0, 10, 10))
	gsub := gbig.SubImage(image.Rect(1, 2, 5, 5)).(*image.Gray)
	for y := range 3 {
		for x := range 4 {
			gsub.Set(1+x, 2+y, g.At(x, y))
		}
	}
	p = DefaultPreprocess(3, 5, 2)
	want = make([]float32, TensorSize(p))
	Tensor(g, p, want)
	for _, img := range []image.Image{g16, gsub} {
		got := make([]float32, TensorSize(p))
		if err := Tensor(img, p, got); err != nil {
			t.Fatal(err)
		}
		close32(t, got, want, 1e-6)
	}
}

// Tensor's resize against torch (Debian python3-torch, if installed): antialiased
// bilinear, align_corners=False, shrinking and enlarging.
func TestTensorMatchesTorch(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the torch oracle")
	}
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	if err := exec.Command(py, "-c", "import torch").Run(); err != nil {
		t.Skip("no torch for /usr/bin/python3")
	}
	r := rand.New(rand.NewPCG(3, 4))
	const sw, sh = 37, 23
	img := image.NewNRGBA(image.Rect(0, 0, sw, sh))
	for i := range img.Pix {
		img.Pix[i] = uint8(r.IntN(256))
		if i%4 == 3 {
			img.Pix[i] = 255
		}
	}
	sizes := [][2]int{{16, 20}, {50, 9}, {23, 37}, {7, 64}}
	dir := t.TempDir()
	var raw bytes.Buffer
	for c := range 3 {
		for i := range sw * sh {
			raw.WriteByte(img.Pix[4*i+c])
		}
	}
	in := filepath.Join(dir, "in.u8")
	if err := os.WriteFile(in, raw.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	fmt.Fprintf(&script, `import torch, torch.nn.functional as F, sys
x = torch.frombuffer(bytearray(open(%q, "rb").read()), dtype=torch.uint8).float().div(255).reshape(1, 3, %d, %d)
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1); std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
`, in, sh, sw)
	for _, s := range sizes {
		fmt.Fprintf(&script, "sys.stdout.buffer.write(((F.interpolate(x, size=(%d, %d), mode='bilinear', align_corners=False, antialias=True) - mean) / std).contiguous().numpy().tobytes())\n", s[0], s[1])
	}
	out, err := exec.Command(py, "-c", script.String()).Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	off := 0
	for _, s := range sizes {
		p := DefaultPreprocess(3, s[0], s[1])
		got := make([]float32, TensorSize(p))
		if err := Tensor(img, p, got); err != nil {
			t.Fatal(err)
		}
		want := make([]float32, len(got))
		if err := binary.Read(bytes.NewReader(out[off:off+4*len(got)]), binary.LittleEndian, want); err != nil {
			t.Fatal(err)
		}
		off += 4 * len(got)
		close32(t, got, want, 2e-5)
	}
}
