// Package quantize rewrites the linear layers of a (merged, fp32) vision transformer
// into the quantized forms ONNX Runtime's CPU kernels run fast:
//
//   - 8 bits: each weight matrix becomes int8, symmetric, one scale per output channel
//     (scale = max|w|/127, zero point 0); activations are quantized at run time
//     (dynamic quantization: uint8, one scale and zero point per run). Form says which
//     node pattern carries it; the default, standard ONNX operators, ran as fast as
//     ONNX Runtime's own fused operator on vit_b_16 (it fuses the pattern itself).
//   - 4 bits: weight-only, com.microsoft MatMulNBits: each output channel is cut into
//     blocks of BlockSize weights along the input axis, each block with its own scale
//     and zero point (asymmetric, codes 0..15); activations stay float.
//
// The layers are the ones surgery.FindViT finds: q/k/v (or their fused projection),
// the attention output projection, fc1, fc2 and the head. The patch embedding stays
// fp32 (a convolution holding under 1% of a ViT's weights). Model records what it did
// under meta.KeyQuantization and refuses a model that is quantized already.
//
// This package is pure Go; running the result is export/ort's job.
package quantize

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// Form is the node pattern an 8-bit layer is written in.
type Form int

const (
	// Integer is standard ONNX: DynamicQuantizeLinear, MatMulInteger, Cast and a Mul by
	// the activation scale times the per-channel weight scales. ONNX Runtime fuses the
	// pattern into its DynamicQuantizeMatMul kernel; other runtimes run it as written.
	Integer Form = iota
	// Fused is com.microsoft DynamicQuantizeMatMul written directly (ONNX Runtime only).
	Fused
)

func (f Form) String() string {
	if f == Fused {
		return "DynamicQuantizeMatMul"
	}
	return "DynamicQuantizeLinear+MatMulInteger"
}

// DefaultBlockSize is the int4 block size when Options.BlockSize is 0.
const DefaultBlockSize = 32

// Options say how to quantize.
type Options struct {
	Bits      int  // 8 or 4
	BlockSize int  // 4 bits: weights per block along the input axis, a power of two ≥ 16 (0: DefaultBlockSize)
	Form      Form // 8 bits: the node pattern
	// AccuracyLevel is MatMulNBits' accuracy_level for 4 bits: 0 multiplies in float
	// (weights dequantized), 4 lets ONNX Runtime quantize activations to int8 per block
	// and multiply in integers.
	AccuracyLevel int
}

// ErrQuantized is returned for a model that is quantized already.
var ErrQuantized = errors.New("model is quantized already")

// Report says what Model did.
type Report struct {
	meta.Quantization
	WeightsBefore int64 `json:"weight_bytes_before"` // bytes of the quantized layers' fp32 weights
	WeightsAfter  int64 `json:"weight_bytes_after"`  // bytes of their quantized weights, scales and zero points
}

func (r *Report) String() string {
	return fmt.Sprintf("quantized %d linear layers to %s (%s); their weights: %.2f MB fp32 -> %.2f MB\n",
		len(r.Layers), r.Scheme, r.Detail(), float64(r.WeightsBefore)/1e6, float64(r.WeightsAfter)/1e6)
}

// Check validates opt: the one-line reason it is not usable, or nil.
func (opt Options) Check() error {
	switch opt.Bits {
	case 8:
		if opt.BlockSize != 0 {
			return fmt.Errorf("block size is for 4-bit quantization; int8 has one scale per output channel")
		}
	case 4:
		if a := opt.AccuracyLevel; a != 0 && a != 4 {
			return fmt.Errorf("accuracy level %d: want 0 (float) or 4 (int8)", a)
		}
		if b := opt.BlockSize; b != 0 && (b < 16 || b&(b-1) != 0) {
			return fmt.Errorf("block size %d: want a power of two, at least 16", b)
		}
	default:
		return fmt.Errorf("%d bits: want 8 or 4", opt.Bits)
	}
	return nil
}

// Quantized reports whether m is quantized already (sptctl's record, or quantized
// operators in its graph), and how it knows.
func Quantized(m *onnxpb.ModelProto) (bool, string) {
	if _, ok := onnxio.Metadata(m, meta.KeyQuantization); ok {
		return true, "it records " + meta.KeyQuantization
	}
	for _, n := range m.GetGraph().GetNode() {
		switch n.GetOpType() {
		case "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv",
			"DequantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "MatMulBnb4":
			return true, fmt.Sprintf("node %q is a %s", n.GetName(), n.GetOpType())
		}
	}
	return false, ""
}

// Model quantizes m's linear layers in place and records how under
// meta.KeyQuantization. m must be an fp32 ViT that surgery.FindViT reads.
func Model(m *onnxpb.ModelProto, opt Options) (*Report, error) {
	if err := opt.Check(); err != nil {
		return nil, err
	}
	if opt.Bits == 4 && opt.BlockSize == 0 {
		opt.BlockSize = DefaultBlockSize
	}
	if q, how := Quantized(m); q {
		return nil, fmt.Errorf("%w (%s); quantize the fp32 model", ErrQuantized, how)
	}
	g := surgery.New(m)
	v, err := surgery.FindViT(g)
	if err != nil {
		return nil, err
	}
	r := &Report{Quantization: meta.Quantization{Bits: opt.Bits}}
	if opt.Bits == 8 {
		r.Scheme = "int8"
		r.Weights = "int8, symmetric, one scale per output channel"
		r.Activations = "uint8, dynamic (one scale and zero point per run)"
		r.Form = opt.Form.String()
	} else {
		r.Scheme, r.BlockSize = "int4", opt.BlockSize
		r.Weights = fmt.Sprintf("4-bit, asymmetric, one scale and zero point per %d weights of an output channel", opt.BlockSize)
		r.Activations = "float (weight-only)"
		r.Form = "MatMulNBits"
	}
	seen := map[*onnxpb.NodeProto]bool{}
	var layers []*surgery.Linear
	for _, l := range append(v.Linears(), v.Head) {
		if l == nil || seen[l.Node] {
			continue
		}
		seen[l.Node] = true
		layers = append(layers, l)
	}
	for _, l := range layers {
		name := l.Name
		if l.Fused {
			name = name[:strings.LastIndexByte(name, '.')+1] + "qkv"
		}
		before, after, err := rewrite(g, l, name, opt)
		if err != nil {
			return nil, fmt.Errorf("quantize %s (node %q): %w", name, l.Node.GetName(), err)
		}
		r.Layers = append(r.Layers, name)
		r.WeightsBefore += before
		r.WeightsAfter += after
	}
	g.RemoveDeadNodes()
	if err := g.TopoSort(); err != nil {
		return nil, err
	}
	useContribDomain(m, opt)
	if err := meta.Set(m, meta.KeyQuantization, r.Quantization); err != nil {
		return nil, err
	}
	return r, nil
}

// useContribDomain imports com.microsoft when the rewrite used its operators.
func useContribDomain(m *onnxpb.ModelProto, opt Options) {
	if opt.Bits == 8 && opt.Form == Integer {
		return
	}
	for _, o := range m.OpsetImport {
		if o.GetDomain() == msDomain {
			return
		}
	}
	m.OpsetImport = append(m.OpsetImport, &onnxpb.OperatorSetIdProto{Domain: proto.String(msDomain), Version: proto.Int64(1)})
}

const msDomain = "com.microsoft"

// rewrite replaces the MatMul or Gemm of l with its quantized form, which writes the
// same value (x·W, plus the bias for a Gemm). It returns the weight bytes before and
// after.
func rewrite(g *surgery.Graph, l *surgery.Linear, name string, opt Options) (before, after int64, err error) {
	n := l.Node
	wt := g.Initializer(l.Weight)
	w, err := onnxio.Floats(wt)
	if err != nil {
		return 0, 0, err
	}
	k, cols := int(wt.Dims[0]), int(wt.Dims[1])
	if l.Layout == surgery.OutIn { // stored [out, in]: make it [in, out]
		w, k, cols = transpose(w, k, cols), cols, k
	}
	before = int64(4 * len(w))
	x := l.Input
	out := n.Output[0]
	var y string
	if opt.Bits == 8 {
		q, scales := int8PerChannel(w, k, cols)
		qName := g.AddInitializer(tensor(l.Weight+"_int8", onnxpb.TensorProto_INT8, []int64{int64(k), int64(cols)}, int8Bytes(q)))
		sName := g.AddInitializer(floatTensor(l.Weight+"_scale", []int64{int64(cols)}, scales))
		after = int64(len(q) + 4*len(scales))
		if opt.Form == Fused {
			nd := g.AddNode("DynamicQuantizeMatMul", name+"/DynamicQuantizeMatMul", []string{x, qName, sName}, []string{name + "/y"})
			nd.Domain, y = proto.String(msDomain), nd.Output[0]
		} else {
			dq := g.AddNode("DynamicQuantizeLinear", name+"/DynamicQuantizeLinear", []string{x}, []string{name + "/x_q", name + "/x_scale", name + "/x_zero"})
			mm := g.AddNode("MatMulInteger", name+"/MatMulInteger", []string{dq.Output[0], qName, dq.Output[2]}, []string{name + "/y_int32"})
			cast := g.AddNode("Cast", name+"/Cast", mm.Output, []string{name + "/y_raw"}, surgery.IntAttr("to", int64(onnxpb.TensorProto_FLOAT)))
			sc := g.AddNode("Mul", name+"/scale", []string{dq.Output[1], sName}, []string{name + "/y_scale"})
			y = g.AddNode("Mul", name+"/Mul", []string{cast.Output[0], sc.Output[0]}, []string{name + "/y"}).Output[0]
		}
	} else {
		b := int4Blocks(w, k, cols, opt.BlockSize)
		blocks := int64(len(b.Scales) / cols)
		qName := g.AddInitializer(tensor(l.Weight+"_int4", onnxpb.TensorProto_UINT8, []int64{int64(cols), blocks, int64(opt.BlockSize / 2)}, b.Codes))
		sName := g.AddInitializer(floatTensor(l.Weight+"_scale", []int64{int64(len(b.Scales))}, b.Scales))
		zName := g.AddInitializer(tensor(l.Weight+"_zero", onnxpb.TensorProto_UINT8, []int64{int64(len(b.Zeros))}, b.Zeros))
		after = int64(len(b.Codes) + 4*len(b.Scales) + len(b.Zeros))
		nd := g.AddNode("MatMulNBits", name+"/MatMulNBits", []string{x, qName, sName, zName}, []string{name + "/y"},
			surgery.IntAttr("K", int64(k)), surgery.IntAttr("N", int64(cols)), surgery.IntAttr("bits", 4),
			surgery.IntAttr("block_size", int64(opt.BlockSize)), surgery.IntAttr("accuracy_level", int64(opt.AccuracyLevel)))
		nd.Domain, y = proto.String(msDomain), nd.Output[0]
	}
	if n.GetOpType() == "Gemm" && len(n.Input) > 2 && n.Input[2] != "" {
		y = g.AddNode("Add", name+"/bias", []string{y, n.Input[2]}, []string{name + "/y_bias"}).Output[0]
	}
	// The last new node takes over the old node's output name, so every consumer (or
	// the graph output) reads it unchanged; the old node is left dead.
	n.Output[0] = g.UniqueName(out + "_fp32")
	last := g.Nodes()[len(g.Nodes())-1]
	if last.Output[0] != y {
		return 0, 0, fmt.Errorf("internal: the rewrite does not end in %s", y)
	}
	last.Output[0] = out
	g.Reindex()
	return before, after, nil
}

// int8PerChannel quantizes w, [k, n] row-major, per column (output channel):
// scale[j] = max_i |w[i,j]| / 127 (1 for an all-zero column), q = round(w/scale),
// rounding half to even as ONNX's QuantizeLinear does.
func int8PerChannel(w []float32, k, n int) (q []int8, scale []float32) {
	scale = make([]float32, n)
	for j := 0; j < n; j++ {
		var m float32
		for i := 0; i < k; i++ {
			m = max(m, float32(math.Abs(float64(w[i*n+j]))))
		}
		scale[j] = 1
		if m > 0 {
			scale[j] = m / 127
		}
	}
	q = make([]int8, len(w))
	for i := 0; i < k; i++ {
		for j := 0; j < n; j++ {
			v := math.RoundToEven(float64(w[i*n+j] / scale[j]))
			q[i*n+j] = int8(max(-127, min(127, v)))
		}
	}
	return q, scale
}

// int4 is a weight matrix in MatMulNBits' 4-bit layout.
type int4 struct {
	Codes  []byte    // [n, blocks, blockSize/2]: two codes a byte along k, the first in the low nibble
	Scales []float32 // [n·blocks]
	Zeros  []byte    // [n, ceil(blocks/2)]: two zero points a byte, the first in the low nibble
}

// int4Blocks quantizes w, [k, n] row-major, in blocks of blockSize along k for every
// column j: scale = (max−min)/15 over the block (its range widened to hold 0),
// zero = round(−min/scale), code = clamp(round(w/scale) + zero, 0, 15). A last
// partial block is padded with codes equal to its zero point (value 0).
func int4Blocks(w []float32, k, n, blockSize int) int4 {
	blocks := (k + blockSize - 1) / blockSize
	zb := (blocks + 1) / 2
	r := int4{Codes: make([]byte, n*blocks*blockSize/2), Scales: make([]float32, n*blocks), Zeros: make([]byte, n*zb)}
	for j := 0; j < n; j++ {
		for b := 0; b < blocks; b++ {
			lo, hi := float32(0), float32(0)
			for i := b * blockSize; i < min(k, (b+1)*blockSize); i++ {
				lo, hi = min(lo, w[i*n+j]), max(hi, w[i*n+j])
			}
			scale := (hi - lo) / 15
			if scale == 0 {
				scale = 1
			}
			zero := byte(max(0, min(15, math.RoundToEven(float64(-lo/scale)))))
			r.Scales[j*blocks+b] = scale
			r.Zeros[j*zb+b/2] |= zero << (4 * (b % 2))
			blob := r.Codes[(j*blocks+b)*blockSize/2:]
			for t := 0; t < blockSize; t++ {
				code := zero
				if i := b*blockSize + t; i < k {
					code = byte(max(0, min(15, math.RoundToEven(float64(w[i*n+j]/scale))+float64(zero))))
				}
				blob[t/2] |= code << (4 * (t % 2))
			}
		}
	}
	return r
}

func transpose(w []float32, rows, cols int) []float32 {
	t := make([]float32, len(w))
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			t[j*rows+i] = w[i*cols+j]
		}
	}
	return t
}

func tensor(name string, dt onnxpb.TensorProto_DataType, dims []int64, raw []byte) *onnxpb.TensorProto {
	return &onnxpb.TensorProto{Name: proto.String(name), DataType: proto.Int32(int32(dt)), Dims: dims, RawData: raw}
}

func floatTensor(name string, dims []int64, v []float32) *onnxpb.TensorProto {
	raw := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
	}
	return tensor(name, onnxpb.TensorProto_FLOAT, dims, raw)
}

func int8Bytes(q []int8) []byte {
	b := make([]byte, len(q))
	for i, v := range q {
		b[i] = byte(v)
	}
	return b
}
