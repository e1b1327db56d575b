package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/export/quantize"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// int4AccuracyLevel is the MatMulNBits accuracy level export writes: 4 lets ONNX
// Runtime multiply in int8 (faster than 0, float, on vit_b_16; bench/RESULTS-quantize.md).
const int4AccuracyLevel = 4

// quantizeFlags are export's flags for a quantized merge.
func quantizeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "quantize", Usage: "with --merge: write the merged model's linear layers as `int8` (per output channel, dynamic activations) or int4 (weight-only, MatMulNBits)"},
		&cli.IntFlag{Name: "block-size", Usage: "int4: weights per scale along the input axis (a power of two ≥ 16; default 32)"},
		&cli.Float64Flag{Name: "max-drop", Usage: "with --quantize and --data: refuse (write nothing) if the quantized model's top-1 is more than `PTS` points below the fp32 merged model's"},
		&cli.StringFlag{Name: "val-split", Usage: "split of --data the quantized and fp32 models are compared on", Value: "val"},
	}
}

// quantizeOptions reads export's quantization flags; ok is false without --quantize.
func quantizeOptions(c *cli.Context) (opt quantize.Options, ok bool, err error) {
	q := c.String("quantize")
	if q == "" {
		for _, f := range []string{"block-size", "max-drop"} {
			if c.IsSet(f) {
				return opt, false, usagef("export: --%s goes with --quantize", f)
			}
		}
		return opt, false, nil
	}
	if opt, err = schemeOptions(q); err != nil {
		return opt, false, usagef("export: %v", err)
	}
	switch {
	case !c.Bool("merge"):
		return opt, false, usagef("export: --quantize needs --merge (it quantizes the merged model)")
	case c.IsSet("block-size") && opt.Bits != 4:
		return opt, false, usagef("export: --block-size goes with --quantize int4 (int8 has one scale per output channel)")
	case c.IsSet("max-drop") && c.String("data") == "":
		return opt, false, usagef("export: --max-drop needs --data (the top-1 it limits is measured on --val-split of --data)")
	case c.IsSet("max-drop") && !(c.Float64("max-drop") >= 0):
		return opt, false, usagef("export: --max-drop %v: want points of top-1, at least 0", c.Float64("max-drop"))
	}
	opt.BlockSize = c.Int("block-size")
	if err := opt.Check(); err != nil {
		return opt, false, usagef("export: --quantize %s: %v", q, err)
	}
	if err := runtimeSupports(opt); err != nil {
		return opt, false, usagef("export: %v", err)
	}
	return opt, true, nil
}

// schemeOptions are the quantize options of a --quantize value.
func schemeOptions(scheme string) (quantize.Options, error) {
	switch scheme {
	case "int8":
		return quantize.Options{Bits: 8}, nil
	case "int4":
		return quantize.Options{Bits: 4, AccuracyLevel: int4AccuracyLevel}, nil
	}
	return quantize.Options{}, fmt.Errorf("--quantize %q: want int8 or int4", scheme)
}

// runtimeSupports checks that the ONNX Runtime loaded has the kernels opt needs.
func runtimeSupports(opt quantize.Options) error {
	if opt.Bits != 4 {
		return nil
	}
	if err := probeMatMulNBits(); err != nil {
		return fmt.Errorf("--quantize int4 needs ONNX Runtime's com.microsoft MatMulNBits kernel, which %s lacks (%v); use --quantize int8", ort.LibraryPath(), err)
	}
	return nil
}

// probeMatMulNBits is the int4 kernel check runtimeSupports makes (a test replaces
// it to play an ONNX Runtime without the kernel).
var probeMatMulNBits = matMulNBitsSupported

// matMulNBitsSupported runs a 1×16 · 16×1 MatMulNBits in ONNX Runtime.
func matMulNBitsSupported() error {
	m := &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: proto.Int64(17)}, {Domain: proto.String("com.microsoft"), Version: proto.Int64(1)}},
		Graph: &onnxpb.GraphProto{
			Name: proto.String("probe"),
			Node: []*onnxpb.NodeProto{{OpType: proto.String("MatMulNBits"), Domain: proto.String("com.microsoft"),
				Input: []string{"x", "b", "s"}, Output: []string{"y"},
				Attribute: []*onnxpb.AttributeProto{intAttr("K", 16), intAttr("N", 1), intAttr("bits", 4), intAttr("block_size", 16)}}},
			Initializer: []*onnxpb.TensorProto{
				{Name: proto.String("b"), DataType: proto.Int32(int32(onnxpb.TensorProto_UINT8)), Dims: []int64{1, 1, 8}, RawData: []byte{0x99, 0x99, 0x99, 0x99, 0x99, 0x99, 0x99, 0x99}},
				{Name: proto.String("s"), DataType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)), Dims: []int64{1}, RawData: []byte{0, 0, 0x80, 0x3f}},
			},
			Input:  []*onnxpb.ValueInfoProto{floatInfo("x", 1, 16)},
			Output: []*onnxpb.ValueInfoProto{floatInfo("y", 1, 1)},
		},
	}
	b, err := onnxio.Encode(m)
	if err != nil {
		return err
	}
	s, err := ort.OpenBytes(b, ort.Threads(1))
	if err != nil {
		return err
	}
	defer s.Close()
	x := ort.Tensor{Shape: []int64{1, 16}, Data: make([]float32, 16)}
	for i := range x.Data {
		x.Data[i] = 1
	}
	y, err := s.Run(map[string]ort.Tensor{"x": x})
	if err != nil {
		return err
	}
	// every code is 9, the default zero point 8, the scale 1: each product is 1
	if got := y["y"].Data; len(got) != 1 || got[0] != 16 {
		return fmt.Errorf("MatMulNBits gave %v, want [16]", got)
	}
	return nil
}

func intAttr(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

func floatInfo(name string, dims ...int64) *onnxpb.ValueInfoProto {
	shape := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		shape.Dim = append(shape.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}})
	}
	return &onnxpb.ValueInfoProto{Name: proto.String(name), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{
		TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)), Shape: shape}}}}
}

// quantizeResult is the quantization part of `export --json`.
type quantizeResult struct {
	*quantize.Report
	Check quantCheck `json:"check"`
}

// quantCheck compares the quantized model with the fp32 merged one: on a data split
// (top-1 of both and how often their predictions differ) or, without data, on the
// parity inputs (the output difference).
type quantCheck struct {
	Split        string  `json:"split,omitempty"`
	Images       int     `json:"images"`
	Top1FP32     float64 `json:"top1_fp32,omitempty"`
	Top1         float64 `json:"top1_quantized,omitempty"`
	Drop         float64 `json:"drop_points,omitempty"` // top-1 points lost
	Disagreement float64 `json:"disagreement"`          // share of images whose top class differs
	MaxAbs       float64 `json:"max_abs"`               // of the logits
	Rel          float64 `json:"rel"`                   // MaxAbs / max|fp32 logit|
}

// exportMergedQuantized is the merge export quantized: m (changed: it becomes the
// merged, then the quantized model) folded into base's graph (export.MergeInto: base
// is used up), then exportQuantized.
func exportMergedQuantized(log io.Writer, m, base *onnxpb.ModelProto, out string, opt quantize.Options, p *parity, qa quantCheckArgs) (*export.MergeReport, *quantizeResult, error) {
	rep, err := export.MergeInto(m, base)
	if err != nil {
		return nil, nil, err
	}
	qa.Compute = p.cs
	q, err := exportQuantized(log, m, out, opt, p.xs, p.verify, qa)
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(log, "wrote %s\n", out)
	return rep, q, nil
}

// quantCheckArgs say what the quantized model is compared with the fp32 one on: a
// split of a data folder, or (Data empty) the parity inputs.
type quantCheckArgs struct {
	Data, Split string
	MaxDrop     float64         // top-1 points the quantized model may lose (with Data)
	Limit       bool            // whether MaxDrop applies
	Compute     computeSettings // ONNX Runtime's threads (set from the parity check's)
}

// exportQuantized writes the merged model m quantized to out: the fp32 merged model
// is written to a temporary folder and verified as every merge is (verify), then
// quantized; the quantized model is compared with it (on --val-split of --data, or on
// the parity inputs xs) and written only if it loses at most --max-drop points.
func exportQuantized(log io.Writer, m *onnxpb.ModelProto, out string, opt quantize.Options, xs []ort.Tensor, verify export.Verify, qa quantCheckArgs) (*quantizeResult, error) {
	if q, how := quantize.Quantized(m); q {
		return nil, fmt.Errorf("the merged model is quantized already (%s): quantize an fp32 model", how)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), ".sptctl-fp32-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	fp32 := filepath.Join(tmp, "merged-fp32.onnx")
	if err := export.SaveVerified(fp32, m, verify); err != nil {
		return nil, err
	}
	rep, err := quantize.Model(m, opt)
	if err != nil {
		return nil, fmt.Errorf("quantize the merged model: %w", err)
	}
	res := &quantizeResult{Report: rep}
	fmt.Fprint(log, rep)
	check := func(staged string) error {
		if qa.Data != "" {
			res.Check, err = compareOnSplit(fp32, staged, qa.Data, qa.Split, qa.Compute)
		} else {
			res.Check, err = compareOnInputs(fp32, staged, xs, qa.Compute)
		}
		if err != nil {
			return fmt.Errorf("quantization check: %w", err)
		}
		k := res.Check
		if k.Split != "" {
			fmt.Fprintf(log, "quantization check on %d images of split %s: top-1 fp32 merged %.2f%%, %s %.2f%% (%+.2f points); predictions differ on %.2f%%; logits max |a−b| %.3g, relative %.3g\n",
				k.Images, k.Split, 100*k.Top1FP32, rep.Scheme, 100*k.Top1, -k.Drop, 100*k.Disagreement, k.MaxAbs, k.Rel)
		} else {
			fmt.Fprintf(log, "quantization check on %d inputs (no --data): %s vs fp32 merged logits max |a−b| %.3g, relative %.3g; top class differs on %.0f%%\n",
				k.Images, rep.Scheme, k.MaxAbs, k.Rel, 100*k.Disagreement)
		}
		if qa.Limit && k.Drop > qa.MaxDrop {
			return fmt.Errorf("the %s model loses %.2f points of top-1 on split %s (%.2f%% -> %.2f%%), more than --max-drop %g; nothing written",
				rep.Scheme, k.Drop, k.Split, 100*k.Top1FP32, 100*k.Top1, qa.MaxDrop)
		}
		return nil
	}
	if err := export.SaveVerified(out, m, check); err != nil {
		return nil, err
	}
	return res, nil
}

// compareOnInputs runs both models on the inputs and compares their logits.
func compareOnInputs(fp32, quant string, xs []ort.Tensor, cs computeSettings) (quantCheck, error) {
	var k quantCheck
	var maxRef float64
	differ := 0
	as, err := ortRunAll(fp32, xs, cs)
	if err != nil {
		return k, err
	}
	bs, err := ortRunAll(quant, xs, cs)
	if err != nil {
		return k, err
	}
	for i := range xs {
		n, d, mr, err := compareLogits(as[i], bs[i])
		if err != nil {
			return k, err
		}
		k.Images += n
		differ += d
		k.MaxAbs = max(k.MaxAbs, mr[0])
		maxRef = max(maxRef, mr[1])
	}
	k.Disagreement = float64(differ) / float64(max(k.Images, 1))
	k.Rel = k.MaxAbs / max(maxRef, math.SmallestNonzeroFloat64)
	return k, nil
}

// compareLogits compares two [n, classes] outputs: rows, rows whose top class
// differs, and max |a−b| and max |a|.
func compareLogits(a, b ort.Tensor) (rows, differ int, m [2]float64, err error) {
	if len(a.Shape) != 2 || !slices.Equal(a.Shape, b.Shape) || len(a.Data) != len(b.Data) {
		return 0, 0, m, fmt.Errorf("outputs of shapes %v and %v; want the same [batch classes]", a.Shape, b.Shape)
	}
	k := int(a.Shape[1])
	for i := 0; i < int(a.Shape[0]); i++ {
		ra, rb := a.Data[i*k:(i+1)*k], b.Data[i*k:(i+1)*k]
		if slices.Index(ra, slices.Max(ra)) != slices.Index(rb, slices.Max(rb)) {
			differ++
		}
		for j := range ra {
			d := math.Abs(float64(ra[j]) - float64(rb[j]))
			if math.IsNaN(d) {
				d = math.Inf(1)
			}
			m[0] = max(m[0], d)
			m[1] = max(m[1], math.Abs(float64(ra[j])))
		}
	}
	return int(a.Shape[0]), differ, m, nil
}

// compareOnSplit evaluates both models on every image of a split: top-1 of each and
// how often their predictions differ.
func compareOnSplit(fp32, quant, dir, splitName string, cs computeSettings) (quantCheck, error) {
	k := quantCheck{}
	sa, err := ort.Open(fp32, cs.ort())
	if err != nil {
		return k, err
	}
	defer sa.Close()
	sb, err := ort.Open(quant, cs.ort())
	if err != nil {
		return k, err
	}
	defer sb.Close()
	in, err := imageInput(sa.Inputs())
	if err != nil {
		return k, fmt.Errorf("%s: %w", fp32, err)
	}
	m, err := onnxio.Load(fp32)
	if err != nil {
		return k, err
	}
	p, _, err := modelPreprocess(m, in)
	if err != nil {
		return k, err
	}
	m = nil
	ds, err := data.Open(dir)
	if err != nil {
		return k, err
	}
	split, err := ds.Split(splitName)
	if err != nil {
		return k, err
	}
	if split.Len() == 0 {
		return k, fmt.Errorf("data %s: split %s is empty", dir, split.SplitName())
	}
	k.Split = split.SplitName()
	bs := 32
	if in.Batch > 0 {
		bs = int(in.Batch)
	}
	it := data.NewLoader(split, p, bs, false, 0, 0).Epoch(nil, 0, 0)
	defer it.Close()
	size := data.TensorSize(p)
	outA, outB := sa.Outputs()[0].Name, sb.Outputs()[0].Name
	var correctA, correctB, differ int
	var maxRef float64
	for {
		b, ok, err := it.Next()
		if err != nil {
			return k, err
		}
		if !ok {
			break
		}
		x := ort.Tensor{Shape: []int64{int64(b.N), in.C, in.H, in.W}, Data: b.Images}
		if in.Batch > 0 && int64(b.N) < in.Batch { // pad a fixed batch; the padding is not counted
			x.Shape[0] = in.Batch
			x.Data = append(b.Images[:b.N*size:b.N*size], make([]float32, (int(in.Batch)-b.N)*size)...)
		}
		ya, err := sa.Run(map[string]ort.Tensor{in.Name: x})
		if err != nil {
			return k, err
		}
		yb, err := sb.Run(map[string]ort.Tensor{in.Name: x})
		if err != nil {
			return k, err
		}
		a, q := ya[outA], yb[outB]
		if len(a.Shape) != 2 || len(q.Shape) != 2 || a.Shape[1] != q.Shape[1] {
			return k, fmt.Errorf("outputs of shapes %v and %v; want [batch classes] logits", a.Shape, q.Shape)
		}
		c := int(a.Shape[1])
		a.Shape[0], q.Shape[0] = int64(b.N), int64(b.N)
		a.Data, q.Data = a.Data[:b.N*c], q.Data[:b.N*c]
		_, d, mr, err := compareLogits(a, q)
		if err != nil {
			return k, err
		}
		differ += d
		k.MaxAbs, maxRef = max(k.MaxAbs, mr[0]), max(maxRef, mr[1])
		for i := 0; i < b.N; i++ {
			ra, rq := a.Data[i*c:(i+1)*c], q.Data[i*c:(i+1)*c]
			if int64(slices.Index(ra, slices.Max(ra))) == b.Labels[i] {
				correctA++
			}
			if int64(slices.Index(rq, slices.Max(rq))) == b.Labels[i] {
				correctB++
			}
		}
		k.Images += b.N
	}
	if k.Images == 0 {
		return k, errors.New("no images evaluated")
	}
	n := float64(k.Images)
	k.Top1FP32, k.Top1 = float64(correctA)/n, float64(correctB)/n
	k.Drop = 100 * (k.Top1FP32 - k.Top1)
	k.Disagreement = float64(differ) / n
	k.Rel = k.MaxAbs / max(maxRef, math.SmallestNonzeroFloat64)
	return k, nil
}

// quantizationNote is the quantization a model records, for inspect (nil if none).
func quantizationNote(m *onnxpb.ModelProto) (*meta.Quantization, error) {
	var q meta.Quantization
	ok, err := meta.Get(m, meta.KeyQuantization, &q)
	if !ok || err != nil {
		return nil, err
	}
	return &q, nil
}

// summary is the quantization's lines in export's text output.
func (r *quantizeResult) summary() string {
	s := r.Report.String()
	if k := r.Check; k.Split != "" {
		s += fmt.Sprintf("top-1 on %d images of %s: fp32 merged %.2f%%, %s %.2f%% (drop %.2f points); predictions differ on %.2f%%\n",
			k.Images, k.Split, 100*k.Top1FP32, r.Scheme, 100*k.Top1, k.Drop, 100*k.Disagreement)
	} else {
		s += fmt.Sprintf("logits vs fp32 merged on %d inputs: max |a−b| %.3g, relative %.3g; top class differs on %.0f%%\n",
			k.Images, k.MaxAbs, k.Rel, 100*k.Disagreement)
	}
	return s
}

// inspectQuantized is inspect's report on a quantized export: its inputs, outputs,
// stored parameters and the quantization it records.
func inspectQuantized(path string, m *onnxpb.ModelProto, g *surgery.Graph, q *meta.Quantization) *inspectReport {
	r := &inspectReport{Model: path, Opset: onnxio.Opset(m), Producer: strings.TrimSpace(m.GetProducerName() + " " + m.GetProducerVersion()),
		Quantization: q}
	for _, in := range m.Graph.Input {
		if g.Initializer(in.GetName()) == nil {
			r.Inputs = append(r.Inputs, describe(in))
		}
	}
	for _, out := range m.Graph.Output {
		r.Outputs = append(r.Outputs, describe(out))
	}
	for _, t := range m.Graph.Initializer {
		r.Params += onnxio.NumElements(t.Dims)
	}
	return r
}

func (r *inspectReport) printQuantized(w io.Writer) {
	q := r.Quantization
	fmt.Fprintf(w, "model       %s\n", r.Model)
	fmt.Fprintf(w, "opset       %d (%s)\n", r.Opset, r.Producer)
	for _, in := range r.Inputs {
		fmt.Fprintf(w, "input       %s [%s]\n", in.Name, strings.Join(in.Shape, " "))
	}
	for _, out := range r.Outputs {
		fmt.Fprintf(w, "output      %s [%s]\n", out.Name, strings.Join(out.Shape, " "))
	}
	fmt.Fprintf(w, "stored      %s values (quantized codes, scales and the fp32 rest)\n", commas(r.Params))
	bs := ""
	if q.BlockSize > 0 {
		bs = fmt.Sprintf(", block size %d", q.BlockSize)
	}
	fmt.Fprintf(w, "quantized   %s (%d bits%s) by sptctl export --quantize\n", q.Scheme, q.Bits, bs)
	fmt.Fprintf(w, "  operators   %s\n  weights     %s\n  activations %s\n", q.Form, q.Weights, q.Activations)
	fmt.Fprintf(w, "  layers      %d: %s\n", len(q.Layers), strings.Join(q.Layers, " "))
}

// tuneQuantized is the quantized export in tune's report.
type tuneQuantized struct {
	Scheme      string     `json:"scheme"`
	File        string     `json:"file"`
	Top1        float64    `json:"top1"`         // test split
	Bytes       int64      `json:"bytes"`        // the quantized model file
	MergedBytes int64      `json:"merged_bytes"` // the fp32 merged model file
	Check       quantCheck `json:"check"`        // export's comparison with the fp32 merged model
}

// quantize is tune's quantized export of the trained model (not changed), checked
// on the val split (the train split when tune has none), and its eval on the test
// split.
func (t *tuneRun) quantize(trained *onnxpb.ModelProto, pc *parity) error {
	opt, err := schemeOptions(t.a.Quantize)
	if err != nil {
		return usagef("tune: %v", err)
	}
	q := &tuneQuantized{Scheme: t.a.Quantize, File: t.file("merged-" + t.a.Quantize + ".onnx")}
	split := t.a.ValSplit
	if split == "" {
		split = t.a.TrainSplit
	}
	err = t.stage("export quantized", func() error {
		_, res, err := exportMergedQuantized(t.log, proto.Clone(trained).(*onnxpb.ModelProto), proto.Clone(t.base).(*onnxpb.ModelProto), q.File, opt, pc, quantCheckArgs{Data: t.a.Data, Split: split})
		if err != nil {
			return err
		}
		q.Check = res.Check
		return nil
	})
	if err != nil {
		return err
	}
	if q.Top1, _, err = t.eval("eval quantized", q.File); err != nil {
		return err
	}
	for p, n := range map[string]*int64{q.File: &q.Bytes, t.file("merged.onnx"): &q.MergedBytes} {
		if *n, err = fileBytes(p); err != nil {
			return err
		}
	}
	t.r.Quantized = q
	t.r.Files["quantized"] = q.File
	return nil
}

// fileBytes is the size of a model file with its external data side file, if any.
func fileBytes(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	n := st.Size()
	if side, err := os.Stat(path + ".data"); err == nil {
		n += side.Size()
	}
	return n, nil
}
