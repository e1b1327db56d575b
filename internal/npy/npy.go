// Package npy reads and writes NumPy .npy files: little-endian float32 ("<f4") and
// int64 ("<i8") arrays in C order, format versions 1.0, 2.0 and 3.0 on reading,
// 1.0 (or 2.0 for very long headers) on writing.
package npy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/sptctl/sptctl/onnxio"
)

// Array is an n-dimensional array in C (row-major) order. Exactly one of Float32 and
// Int64 holds the data; an empty shape is a scalar (one element).
type Array struct {
	Shape   []int64
	Float32 []float32
	Int64   []int64
}

// Dtype returns the array's NumPy type string: "<f4" or "<i8".
func (a *Array) Dtype() string {
	if a.Int64 != nil && a.Float32 == nil {
		return "<i8"
	}
	return "<f4"
}

// numElements is the number of elements the shape describes, or an error for a
// negative dimension or an overflow.
func numElements(shape []int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, fmt.Errorf("shape %v overflows", shape)
		}
		n *= d
	}
	return n, nil
}

var magic = []byte("\x93NUMPY")

// maxElements bounds what a header may declare before any data is read, so a
// corrupt header cannot make Decode allocate without limit (1<<34 elements is
// 64 GiB of float32).
const maxElements = 1 << 34

// Read reads a .npy file. Errors name the file.
func Read(path string) (*Array, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("npy: %w", err)
	}
	defer f.Close()
	var size int64 = -1
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	a, err := decode(bufio.NewReaderSize(f, 1<<20), size)
	if err != nil {
		return nil, fmt.Errorf("npy: %s: %w", path, err)
	}
	return a, nil
}

// Decode reads one array in .npy format from r.
func Decode(r io.Reader) (*Array, error) {
	a, err := decode(r, -1)
	if err != nil {
		return nil, fmt.Errorf("npy: %w", err)
	}
	return a, nil
}

// decode reads an array from r; size is the total byte count of the input when
// known (-1 otherwise), used to reject truncated files before allocating.
func decode(r io.Reader, size int64) (*Array, error) {
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, fmt.Errorf("not a .npy file (too short): %w", err)
	}
	if !bytes.Equal(pre[:6], magic) {
		return nil, errors.New("not a .npy file (bad magic)")
	}
	major, minor := pre[6], pre[7]
	var hlen int64
	var pos int64 = 8
	switch major {
	case 1:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, fmt.Errorf("truncated header: %w", err)
		}
		hlen = int64(binary.LittleEndian.Uint16(b[:]))
		pos += 2
	case 2, 3:
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, fmt.Errorf("truncated header: %w", err)
		}
		hlen = int64(binary.LittleEndian.Uint32(b[:]))
		pos += 4
	default:
		return nil, fmt.Errorf("unsupported .npy format version %d.%d", major, minor)
	}
	if hlen > 1<<24 || (size >= 0 && pos+hlen > size) {
		return nil, fmt.Errorf("header length %d is out of range", hlen)
	}
	hb := make([]byte, hlen)
	if _, err := io.ReadFull(r, hb); err != nil {
		return nil, fmt.Errorf("truncated header: %w", err)
	}
	pos += hlen
	h, err := parseHeader(string(hb))
	if err != nil {
		return nil, fmt.Errorf("bad header %q: %w", strings.TrimSpace(string(hb)), err)
	}
	if h.fortran {
		return nil, fmt.Errorf("array (dtype %s, shape %v) is in Fortran order; only C order is supported (np.ascontiguousarray)", h.descr, h.shape)
	}
	var elem int64
	switch h.descr {
	case "<f4", "<i8":
		elem = 8
		if h.descr == "<f4" {
			elem = 4
		}
	default:
		return nil, fmt.Errorf("unsupported dtype %q; only little-endian float32 (<f4) and int64 (<i8) are supported", h.descr)
	}
	n, err := numElements(h.shape)
	if err != nil {
		return nil, err
	}
	if n > maxElements {
		return nil, fmt.Errorf("shape %v has too many elements", h.shape)
	}
	if size >= 0 && size-pos != n*elem {
		return nil, fmt.Errorf("data is %d bytes, shape %v of %s needs %d", size-pos, h.shape, h.descr, n*elem)
	}
	var buf []byte
	if size >= 0 {
		buf = make([]byte, n*elem)
		_, err = io.ReadFull(r, buf)
	} else {
		// Unknown length: grow as data arrives rather than trusting the header.
		buf, err = io.ReadAll(io.LimitReader(r, n*elem))
		if err == nil && int64(len(buf)) != n*elem {
			err = io.ErrUnexpectedEOF
		}
	}
	if err != nil {
		return nil, fmt.Errorf("truncated data (shape %v, dtype %s): %w", h.shape, h.descr, err)
	}
	a := &Array{Shape: h.shape}
	if h.descr == "<f4" {
		a.Float32 = make([]float32, n)
		for i := range a.Float32 {
			a.Float32[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
		}
	} else {
		a.Int64 = make([]int64, n)
		for i := range a.Int64 {
			a.Int64[i] = int64(binary.LittleEndian.Uint64(buf[8*i:]))
		}
	}
	return a, nil
}

type header struct {
	descr   string
	fortran bool
	shape   []int64
}

// parseHeader parses the Python dict literal of a .npy header, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
func parseHeader(s string) (*header, error) {
	p := &lit{s: s}
	p.ws()
	if !p.eat('{') {
		return nil, errors.New("expected '{'")
	}
	h := &header{}
	seen := map[string]bool{}
	for {
		p.ws()
		if p.eat('}') {
			break
		}
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		p.ws()
		if !p.eat(':') {
			return nil, errors.New("expected ':'")
		}
		p.ws()
		switch key {
		case "descr":
			if p.peek() != '\'' && p.peek() != '"' {
				return nil, errors.New("descr is not a simple dtype string (structured dtypes are not supported)")
			}
			if h.descr, err = p.str(); err != nil {
				return nil, err
			}
		case "fortran_order":
			switch {
			case strings.HasPrefix(p.s[p.i:], "True"):
				h.fortran, p.i = true, p.i+4
			case strings.HasPrefix(p.s[p.i:], "False"):
				h.fortran, p.i = false, p.i+5
			default:
				return nil, errors.New("fortran_order is not True or False")
			}
		case "shape":
			if h.shape, err = p.tuple(); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unknown key %q", key)
		}
		seen[key] = true
		p.ws()
		if p.eat('}') {
			break
		}
		if !p.eat(',') {
			return nil, errors.New("expected ',' or '}'")
		}
	}
	for _, k := range []string{"descr", "fortran_order", "shape"} {
		if !seen[k] {
			return nil, fmt.Errorf("missing key %q", k)
		}
	}
	if h.shape == nil {
		h.shape = []int64{}
	}
	return h, nil
}

type lit struct {
	s string
	i int
}

func (p *lit) ws() {
	for p.i < len(p.s) && strings.IndexByte(" \t\r\n", p.s[p.i]) >= 0 {
		p.i++
	}
}

func (p *lit) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func (p *lit) eat(c byte) bool {
	if p.peek() == c {
		p.i++
		return true
	}
	return false
}

func (p *lit) str() (string, error) {
	q := p.peek()
	if q != '\'' && q != '"' {
		return "", errors.New("expected a quoted string")
	}
	j := strings.IndexByte(p.s[p.i+1:], q)
	if j < 0 {
		return "", errors.New("unterminated string")
	}
	v := p.s[p.i+1 : p.i+1+j]
	p.i += j + 2
	return v, nil
}

func (p *lit) tuple() ([]int64, error) {
	if !p.eat('(') {
		return nil, errors.New("shape is not a tuple")
	}
	shape := []int64{}
	for {
		p.ws()
		if p.eat(')') {
			return shape, nil
		}
		j := p.i
		for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
			j++
		}
		// NumPy on some platforms writes Python 2 longs such as 3L.
		d, err := strconv.ParseInt(p.s[p.i:j], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad dimension in shape: %q", p.s[p.i:min(j+1, len(p.s))])
		}
		p.i = j
		p.eat('L')
		shape = append(shape, d)
		p.ws()
		if p.eat(')') {
			return shape, nil
		}
		if !p.eat(',') {
			return nil, errors.New("expected ',' or ')' in shape")
		}
	}
}

// Write writes a to path atomically (a temporary file renamed into place).
func Write(path string, a *Array) error {
	if err := check(a); err != nil {
		return fmt.Errorf("npy: %s: %w", path, err)
	}
	if err := onnxio.WriteFileAtomic(path, func(w io.Writer) error { return encode(w, a) }); err != nil {
		return fmt.Errorf("npy: %s: %w", path, err)
	}
	return nil
}

// Encode writes a to w in .npy format.
func Encode(w io.Writer, a *Array) error {
	if err := check(a); err != nil {
		return fmt.Errorf("npy: %w", err)
	}
	return encode(w, a)
}

func check(a *Array) error {
	if a == nil {
		return errors.New("nil array")
	}
	if a.Float32 != nil && a.Int64 != nil {
		return errors.New("array has both Float32 and Int64 data")
	}
	n, err := numElements(a.Shape)
	if err != nil {
		return err
	}
	have := len(a.Float32)
	if a.Int64 != nil {
		have = len(a.Int64)
	}
	if int64(have) != n {
		return fmt.Errorf("shape %v needs %d elements, array has %d", a.Shape, n, have)
	}
	return nil
}

func encode(w io.Writer, a *Array) error {
	var sb strings.Builder
	sb.WriteString("{'descr': '")
	sb.WriteString(a.Dtype())
	sb.WriteString("', 'fortran_order': False, 'shape': (")
	for i, d := range a.Shape {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(strconv.FormatInt(d, 10))
	}
	if len(a.Shape) == 1 {
		sb.WriteByte(',')
	}
	sb.WriteString("), }")
	h := sb.String()
	// Pad with spaces and a final newline so that the data starts at a multiple of
	// 64 bytes, as NumPy does.
	pre := 10
	if len(h)+1+pre > math.MaxUint16 {
		pre = 12
	}
	total := (pre + len(h) + 1 + 63) / 64 * 64
	hdr := h + strings.Repeat(" ", total-pre-len(h)-1) + "\n"
	out := make([]byte, 0, total)
	out = append(out, magic...)
	if pre == 10 {
		out = append(out, 1, 0)
		out = binary.LittleEndian.AppendUint16(out, uint16(len(hdr)))
	} else {
		out = append(out, 2, 0)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(hdr)))
	}
	out = append(out, hdr...)
	if _, err := w.Write(out); err != nil {
		return err
	}
	const chunk = 1 << 16
	buf := make([]byte, 0, 8*chunk)
	if a.Int64 != nil && a.Float32 == nil {
		for i := 0; i < len(a.Int64); i += chunk {
			buf = buf[:0]
			for _, v := range a.Int64[i:min(i+chunk, len(a.Int64))] {
				buf = binary.LittleEndian.AppendUint64(buf, uint64(v))
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < len(a.Float32); i += chunk {
		buf = buf[:0]
		for _, v := range a.Float32[i:min(i+chunk, len(a.Float32))] {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return nil
}
