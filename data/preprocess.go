package data

import (
	"fmt"
	"image"
	"image/color"
	"math"

	"github.com/sptctl/sptctl/internal/meta"
)

// ImageNet normalisation, used by DefaultPreprocess for 3-channel models (torchvision's
// and the SPT reference code's choice).
var (
	ImageNetMean = []float32{0.485, 0.456, 0.406}
	ImageNetStd  = []float32{0.229, 0.224, 0.225}
)

// DefaultPreprocess returns the preprocessing sptctl uses unless told otherwise: for 3
// channels the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225); for any
// other channel count mean 0.5 and std 0.5 per channel (values in [-1, 1]). Whatever is
// used is recorded in the model (meta.KeyPreprocess), so later stages repeat it.
func DefaultPreprocess(channels, h, w int) meta.Preprocess {
	p := meta.Preprocess{Channels: channels, Height: h, Width: w}
	if channels == 3 {
		p.Mean = append([]float32(nil), ImageNetMean...)
		p.Std = append([]float32(nil), ImageNetStd...)
		return p
	}
	for range channels {
		p.Mean = append(p.Mean, 0.5)
		p.Std = append(p.Std, 0.5)
	}
	return p
}

// CheckPreprocess reports whether Tensor can use p: positive sizes, one mean and one
// non-zero std per channel (or a single value for all channels).
func CheckPreprocess(p meta.Preprocess) error {
	if err := CheckInputSize(int64(p.Channels), int64(p.Height), int64(p.Width)); err != nil {
		return fmt.Errorf("preprocess: %w", err)
	}
	if n := len(p.Mean); n != p.Channels && n != 1 {
		return fmt.Errorf("preprocess: %d mean values for %d channels", n, p.Channels)
	}
	if n := len(p.Std); n != p.Channels && n != 1 {
		return fmt.Errorf("preprocess: %d std values for %d channels", n, p.Channels)
	}
	for _, s := range p.Std {
		if s == 0 || math.IsNaN(float64(s)) {
			return fmt.Errorf("preprocess: std %v", p.Std)
		}
	}
	return nil
}

// TensorSize returns the number of float32 values Tensor writes: C×H×W.
func TensorSize(p meta.Preprocess) int { return p.Channels * p.Height * p.Width }

// Tensor writes img as a normalised C×H×W float32 tensor (channel-major, row-major)
// into dst[:C×H×W], following p:
//
//  1. Pixel values are scaled to [0, 1] (8-bit v/255, 16-bit v/65535); colour images use
//     their straight (not alpha-premultiplied) RGB, i.e. alpha is dropped, as PIL's
//     convert("RGB") does.
//  2. Channels: a grayscale image (image.Gray, image.Gray16, or any image whose colour
//     model is a gray one) is repeated to p.Channels; a colour image gives R, G, B for
//     p.Channels == 3, or its luma 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, PIL's
//     convert("L")) for p.Channels == 1.
//  3. Resize to p.Height × p.Width, bilinear with half-pixel centres, separable: a
//     triangle filter that, when shrinking an axis by a factor s > 1, widens to ±s
//     source pixels (antialiasing), exactly the algorithm of PIL's
//     Image.resize(BILINEAR) and torch's interpolate(mode="bilinear",
//     align_corners=False, antialias=True) (computed here in float32, without PIL's
//     8-bit rounding between passes). When enlarging, this is plain bilinear
//     interpolation, identical to interpolate(mode="bilinear", align_corners=False).
//     An image already of the target size is not resampled.
//  4. Normalise: (x − Mean[c]) / Std[c].
//
// Tensor returns an error, and writes nothing, if p is invalid (see CheckPreprocess),
// if a colour image is asked for a channel count other than 1 or 3, if dst is shorter
// than C×H×W, or if the image is empty or over MaxImageSide / MaxImagePixels.
func Tensor(img image.Image, p meta.Preprocess, dst []float32) error {
	if err := CheckPreprocess(p); err != nil {
		return err
	}
	C, H, W := p.Channels, p.Height, p.Width
	if len(dst) < C*H*W {
		return fmt.Errorf("preprocess: destination has %d values, need %d×%d×%d = %d", len(dst), C, H, W, C*H*W)
	}
	b := img.Bounds()
	sw, sh := b.Dx(), b.Dy()
	if sw < 1 || sh < 1 || sw > MaxImageSide || sh > MaxImageSide || int64(sw)*int64(sh) > MaxImagePixels {
		return fmt.Errorf("preprocess: image of %d×%d pixels: want 1 to %d a side, %d in all", sw, sh, MaxImageSide, MaxImagePixels)
	}
	gray := isGray(img)
	if !gray && C != 1 && C != 3 {
		return fmt.Errorf("preprocess: cannot map an RGB image to %d channels (1 or 3)", C)
	}
	planes, _ := toPlanes(img)
	if !gray && C == 1 {
		y := make([]float32, sw*sh)
		r, g, bl := planes[0], planes[1], planes[2]
		for i := range y {
			y[i] = 0.299*r[i] + 0.587*g[i] + 0.114*bl[i]
		}
		planes = [][]float32{y}
	}
	rx, ry := resizeWeights(sw, W), resizeWeights(sh, H)
	tmp := make([]float32, sh*W)
	out := make([]float32, H*W)
	for c := range C {
		src := planes[0]
		if len(planes) == 3 {
			src = planes[c]
		}
		if c == 0 || len(planes) == 3 {
			resizePlane(src, sw, sh, W, H, rx, ry, tmp, out)
		}
		mean, std := p.Mean[0], p.Std[0]
		if len(p.Mean) > 1 {
			mean = p.Mean[c]
		}
		if len(p.Std) > 1 {
			std = p.Std[c]
		}
		d := dst[c*H*W : (c+1)*H*W]
		inv := 1 / std
		for i, v := range out {
			d[i] = (v - mean) * inv
		}
	}
	return nil
}

// isGray reports whether toPlanes gives img one (gray) plane.
func isGray(img image.Image) bool {
	if _, ok := img.(*image.Gray); ok {
		return true
	}
	switch img.(type) {
	case *image.RGBA, *image.NRGBA, *image.YCbCr:
		return false
	}
	m := img.ColorModel()
	return m == color.GrayModel || m == color.Gray16Model
}

// toPlanes converts img to float32 planes in [0,1]: one for a grayscale image, three
// (R, G, B) otherwise.
func toPlanes(img image.Image) ([][]float32, bool) {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	switch m := img.(type) {
	case *image.Gray:
		g := make([]float32, w*h)
		for y := range h {
			row := m.Pix[y*m.Stride : y*m.Stride+w]
			for x, v := range row {
				g[y*w+x] = float32(v) / 255
			}
		}
		return [][]float32{g}, true
	case *image.RGBA:
		if isOpaque(m) {
			return rgbPlanes(m.Pix, m.Stride, w, h), false
		}
	case *image.NRGBA:
		return rgbPlanes(m.Pix, m.Stride, w, h), false
	case *image.YCbCr:
		r, g, bl := make([]float32, w*h), make([]float32, w*h), make([]float32, w*h)
		for y := range h {
			for x := range w {
				yi := m.YOffset(b.Min.X+x, b.Min.Y+y)
				ci := m.COffset(b.Min.X+x, b.Min.Y+y)
				rr, gg, bb := color.YCbCrToRGB(m.Y[yi], m.Cb[ci], m.Cr[ci])
				r[y*w+x] = float32(rr) / 255
				g[y*w+x] = float32(gg) / 255
				bl[y*w+x] = float32(bb) / 255
			}
		}
		return [][]float32{r, g, bl}, false
	}
	switch img.ColorModel() {
	case color.GrayModel, color.Gray16Model:
		g := make([]float32, w*h)
		for y := range h {
			for x := range w {
				v := color.Gray16Model.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.Gray16)
				g[y*w+x] = float32(v.Y) / 65535
			}
		}
		return [][]float32{g}, true
	}
	r, g, bl := make([]float32, w*h), make([]float32, w*h), make([]float32, w*h)
	for y := range h {
		for x := range w {
			c := color.NRGBA64Model.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA64)
			r[y*w+x] = float32(c.R) / 65535
			g[y*w+x] = float32(c.G) / 65535
			bl[y*w+x] = float32(c.B) / 65535
		}
	}
	return [][]float32{r, g, bl}, false
}

func isOpaque(m *image.RGBA) bool {
	b := m.Bounds()
	for y := range b.Dy() {
		row := m.Pix[y*m.Stride : y*m.Stride+4*b.Dx()]
		for x := 3; x < len(row); x += 4 {
			if row[x] != 0xff {
				return false
			}
		}
	}
	return true
}

// axisWeights is the resampling of one axis: output i is
// Σ_k w[i][k] · src[first[i]+k].
type axisWeights struct {
	identity bool
	first    []int
	w        [][]float32
}

// resizeWeights computes PIL's bilinear resampling coefficients (precompute_coeffs with
// the triangle filter) for an axis of in → out pixels.
func resizeWeights(in, out int) axisWeights {
	if in == out {
		return axisWeights{identity: true}
	}
	scale := float64(in) / float64(out)
	fscale := max(scale, 1)
	support := fscale // triangle filter support 1, widened when shrinking
	a := axisWeights{first: make([]int, out), w: make([][]float32, out)}
	for i := range out {
		center := (float64(i) + 0.5) * scale
		xmin := int(center - support + 0.5) // truncation toward zero, as in C
		if xmin < 0 {
			xmin = 0
		}
		xmax := int(center + support + 0.5)
		if xmax > in {
			xmax = in
		}
		ws := make([]float64, 0, xmax-xmin)
		total := 0.0
		for x := xmin; x < xmax; x++ {
			t := math.Abs((float64(x) - center + 0.5) / fscale)
			wt := 0.0
			if t < 1 {
				wt = 1 - t
			}
			ws = append(ws, wt)
			total += wt
		}
		w := make([]float32, len(ws))
		for k := range ws {
			if total != 0 {
				w[k] = float32(ws[k] / total)
			}
		}
		a.first[i], a.w[i] = xmin, w
	}
	return a
}

// resizePlane resamples the sw×sh plane src to dw×dh into out, horizontally first
// (into tmp, sh×dw), then vertically.
func resizePlane(src []float32, sw, sh, dw, dh int, rx, ry axisWeights, tmp, out []float32) {
	h := src
	if !rx.identity {
		h = tmp[:sh*dw]
		for y := range sh {
			row := src[y*sw : (y+1)*sw]
			for x := range dw {
				var s float32
				f := rx.first[x]
				for k, wt := range rx.w[x] {
					s += wt * row[f+k]
				}
				h[y*dw+x] = s
			}
		}
	}
	if ry.identity {
		copy(out, h[:dh*dw])
		return
	}
	for y := range dh {
		o := out[y*dw : (y+1)*dw]
		clear(o)
		f := ry.first[y]
		for k, wt := range ry.w[y] {
			r := h[(f+k)*dw : (f+k+1)*dw]
			for x := range dw {
				o[x] += wt * r[x]
			}
		}
	}
}

// rgbPlanes splits 8-bit RGBA pixels (alpha dropped) into R, G and B planes in [0, 1].
func rgbPlanes(pix []uint8, stride, w, h int) [][]float32 {
	r, g, bl := make([]float32, w*h), make([]float32, w*h), make([]float32, w*h)
	for y := range h {
		row := pix[y*stride : y*stride+4*w]
		for x := range w {
			r[y*w+x] = float32(row[4*x]) / 255
			g[y*w+x] = float32(row[4*x+1]) / 255
			bl[y*w+x] = float32(row[4*x+2]) / 255
		}
	}
	return [][]float32{r, g, bl}
}
