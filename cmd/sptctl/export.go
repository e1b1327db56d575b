package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/export/quantize"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/osmem"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// parityLimit is the largest relative difference (max|a−b| / max|b|) export accepts
// between two runs of the same function.
const parityLimit = 1e-5

// ParityRunner runs a model on the input batches with the given CPU threads and returns
// its (first) output for each.
type ParityRunner func(modelPath string, xs []ort.Tensor, threads int) ([]ort.Tensor, error)

// parityChecker is another executor that must agree with ONNX Runtime on the trained
// model before export writes anything.
type parityChecker struct {
	Name string
	Run  ParityRunner
}

// parityCheckers run next to ONNX Runtime on the trained model at every export. The
// gotch executor registers itself here (registerParityChecker, from an init function).
var parityCheckers []parityChecker

// registerParityChecker adds an executor to the export's parity check.
func registerParityChecker(name string, run ParityRunner) {
	parityCheckers = append(parityCheckers, parityChecker{name, run})
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "export a trained model: merged into the base weights, or as a sidecar on a shared base",
		UsageText: "sptctl export --model TRAINED --merge --out merged.onnx [--base BASE]\n" +
			"sptctl export --model TRAINED --sidecar DIR --task NAME [--base BASE]",
		Description: "--merge folds LoRA modules (W + B·A), sparse deltas and tuned vectors into the base\n" +
			"weights and puts the new head in place of the old one: the graph is the base's, with\n" +
			"the task's weights (Adapters contain a GELU and cannot fold: they stay as nodes).\n\n" +
			"--sidecar writes DIR/NAME.onnx, the trained graph, whose base weights sit in\n" +
			"DIR/base.data, shared by every task exported against the same base (written once,\n" +
			"then checked byte for byte and reused), and whose task tensors sit in DIR/NAME.data.\n" +
			"ONNX Runtime loads DIR/NAME.onnx directly.\n\n" +
			"Both need the base model the trained model was injected from: --base, or the path\n" +
			"inject recorded. Before anything is written, ONNX Runtime runs the trained and the\n" +
			"exported model on a few inputs (--data samples, or random ones); export refuses if\n" +
			"they differ by more than 1e-5 (relative to the largest output).\n\n" +
			"--merge --quantize int8|int4 writes the merged model with its linear layers quantized\n" +
			"(see --quantize) and compares it with the fp32 merged model: top-1 of both and how\n" +
			"often they disagree on --val-split of --data, else the logits on the parity inputs.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "`TRAINED` model (from sptctl train, or an injected one)", Required: true},
			&cli.BoolFlag{Name: "merge", Usage: "fold the task into the base weights"},
			&cli.StringFlag{Name: "out", Usage: "`FILE` to write the merged model to (with --merge)"},
			&cli.StringFlag{Name: "sidecar", Usage: "`DIR` of the shared base.data and the task files"},
			&cli.StringFlag{Name: "task", Usage: "task `NAME`: writes DIR/NAME.onnx and DIR/NAME.data (with --sidecar)"},
			&cli.StringFlag{Name: "base", Usage: "the `BASE` model the trained model was injected from (default: the path inject recorded)"},
			&cli.StringFlag{Name: "data", Usage: "`DATA` folder whose images the parity check uses (default: random inputs)"},
			&cli.StringFlag{Name: "split", Usage: "split of --data to take the parity samples from", Value: "test"},
			&cli.IntFlag{Name: "samples", Usage: "inputs the parity check runs", Value: 4},
			&cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON"},
			threadsFlag("the parity and quantization checks: " + bothThreads),
		}, append(quantizeFlags(), adapterFlags()...)...),
		Action: runExport,
	}
}

// exportResult is what `export --json` prints.
type exportResult struct {
	Mode    string                `json:"mode"` // merge or sidecar
	Model   string                `json:"model"`
	Base    string                `json:"base"`
	Out     string                `json:"out"` // the merged model, or DIR/NAME.onnx
	Parity  []parityResult        `json:"parity"`
	Merge   *export.MergeReport   `json:"merge,omitempty"`
	Quant   *quantizeResult       `json:"quantize,omitempty"`
	Sidecar *export.SidecarReport `json:"sidecar,omitempty"`
}

type parityResult struct {
	What   string  `json:"what"` // "onnxruntime export", or a checker's name
	Inputs int     `json:"inputs"`
	MaxAbs float64 `json:"max_abs"`
	Rel    float64 `json:"rel"`
}

func runExport(c *cli.Context) error {
	qopt, quant, err := quantizeOptions(c)
	if err != nil {
		return err
	}
	cs, err := threadsFrom(c)
	if err != nil {
		return err
	}
	if c.String("adapters") != "" {
		return runAdapterExport(c, cs)
	}
	modelPath := c.String("model")
	merge, dir, task, out := c.Bool("merge"), c.String("sidecar"), c.String("task"), c.String("out")
	switch {
	case merge && dir != "":
		return usagef("export: --merge and --sidecar exclude each other")
	case !merge && dir == "":
		return usagef("export: want --merge --out FILE or --sidecar DIR --task NAME")
	case merge && out == "":
		return usagef("export: --merge needs --out FILE")
	case merge && task != "":
		return usagef("export: --task goes with --sidecar")
	case dir != "" && task == "":
		return usagef("export: --sidecar needs --task NAME")
	case dir != "" && out != "":
		return usagef("export: --out goes with --merge (--sidecar writes DIR/NAME.onnx)")
	}
	if err := checkExport(c); err != nil {
		return err
	}
	if dir != "" {
		if err := export.CheckTaskName(task); err != nil {
			return usagef("export: --task: %v", err)
		}
	}
	m, err := onnxio.Load(modelPath)
	if err != nil {
		return err
	}
	if q, how := quantize.Quantized(m); q && quant {
		return fmt.Errorf("%s is quantized already (%s); quantize from the trained fp32 model", modelPath, how)
	}
	if _, err := export.Plan(m); err != nil {
		if errors.Is(err, export.ErrNotInjected) {
			return fmt.Errorf("%s was %w", modelPath, err)
		}
		return fmt.Errorf("%s: %w", modelPath, err)
	}
	basePath, base, err := loadBase(c, m, modelPath)
	if err != nil {
		return err
	}

	// Parity: ONNX Runtime (and any other executor) on the trained model first.
	xs, err := parityInputs(c, m, modelPath)
	if err != nil {
		return err
	}
	if merge {
		// A merge reads only the trained tensors of m and folds them into the base:
		// hold neither model's weights while the parity checks load the trained model
		// (each loads it itself), and load the base again to fold into it, once.
		if err := export.DropFrozen(m); err != nil {
			return fmt.Errorf("%s: %w", modelPath, err)
		}
		base = nil
		osmem.Release()
	}
	pc, err := checkTrained(c.App.ErrWriter, modelPath, xs, cs)
	if err != nil {
		return err
	}
	if merge {
		if base, err = onnxio.Load(basePath); err != nil {
			return err
		}
		// The merge makes a model's worth of short-lived float buffers (decoded
		// weights, LoRA products) beside the live base: collect them early rather than
		// let the heap grow to twice the live size (Go's default), which would be the
		// export's peak.
		defer debug.SetGCPercent(debug.SetGCPercent(20))
	}
	res := &exportResult{Model: modelPath, Base: basePath}
	if merge {
		res.Mode, res.Out = "merge", out
		if quant {
			qa := quantCheckArgs{Data: c.String("data"), Split: c.String("val-split"), MaxDrop: c.Float64("max-drop"), Limit: c.IsSet("max-drop")}
			res.Merge, res.Quant, err = exportMergedQuantized(c.App.ErrWriter, m, base, out, qopt, pc, qa)
		} else {
			res.Merge, err = exportMerged(c.App.ErrWriter, m, base, out, pc)
		}
		if err != nil {
			return err
		}
	} else {
		res.Mode = "sidecar"
		if res.Sidecar, err = exportSidecar(c.App.ErrWriter, m, base, dir, task, pc); err != nil {
			return err
		}
		res.Out = res.Sidecar.Model
	}
	res.Parity = pc.results
	if c.Bool("json") {
		return writeJSON(c.App.Writer, res)
	}
	if res.Merge != nil {
		fmt.Fprintf(c.App.Writer, "merged %s into %s\n%s", modelPath, out, res.Merge)
		if res.Quant != nil {
			fmt.Fprint(c.App.Writer, res.Quant.summary())
		}
	} else {
		fmt.Fprintf(c.App.Writer, "sidecar of %s\n%s", modelPath, res.Sidecar)
	}
	return nil
}

// parity is ONNX Runtime's output on the trained model for the parity inputs, which
// every export of that model is checked against, and the checks done so far.
type parity struct {
	log      io.Writer
	model    string // the trained model's file
	cs       computeSettings
	xs, refs []ort.Tensor
	results  []parityResult
}

// checkTrained runs ONNX Runtime and every registered checker on the trained model at
// modelPath: they must agree before anything is exported.
//
// The reference is ONNX Runtime without graph optimisations (ort.Unoptimized): the
// graph as written, and on an injected vit_b_16 a session of 1.9x the model's size
// instead of 3.3x (the optimiser folds every sparse delta into a new weight while the
// old ones are alive). The export is checked against it with the optimisations, as it
// will be served.
func checkTrained(log io.Writer, modelPath string, xs []ort.Tensor, cs computeSettings) (*parity, error) {
	p := &parity{log: log, model: modelPath, cs: cs, xs: xs}
	var err error
	if p.refs, err = ortRunAll(modelPath, xs, cs, ort.Unoptimized()); err != nil {
		return nil, fmt.Errorf("parity check: %w", err)
	}
	for _, pc := range parityCheckers {
		what := pc.Name + " on " + modelPath
		gots, err := pc.Run(modelPath, xs, cs.Threads)
		if err != nil {
			return nil, fmt.Errorf("parity check: %s: %w", what, err)
		}
		r, err := compareRuns(what, xs, gots, p.refs)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "parity: %s vs ONNX Runtime on %s: max |a−b| %.3g, relative %.3g\n", pc.Name, modelPath, r.MaxAbs, r.Rel)
		p.results = append(p.results, r)
	}
	return p, nil
}

// verify checks an export staged at path against the trained model.
func (p *parity) verify(staged string) error {
	const what = "ONNX Runtime on the exported model"
	gots, err := ortRunAll(staged, p.xs, p.cs)
	if err != nil {
		return fmt.Errorf("parity check: %s: %w", what, err)
	}
	r, err := compareRuns(what, p.xs, gots, p.refs)
	if err != nil {
		return err
	}
	fmt.Fprintf(p.log, "parity: ONNX Runtime on the export vs on %s: max |a−b| %.3g, relative %.3g (%d inputs)\n", p.model, r.MaxAbs, r.Rel, r.Inputs)
	p.results = append(p.results, r)
	return nil
}

// exportMerged is the merge export: m (it becomes the merged model, and loses its
// graph once written) folded into base's graph (export.MergeInto: base is used up),
// written to out once parity-checked.
func exportMerged(log io.Writer, m, base *onnxpb.ModelProto, out string, p *parity) (*export.MergeReport, error) {
	rep, err := export.MergeInto(m, base)
	if err != nil {
		return nil, err
	}
	verify := func(staged string) error {
		// staged: let the weights go before ONNX Runtime loads its own copy
		m.Graph = nil
		osmem.Release()
		return p.verify(staged)
	}
	if err := export.SaveVerified(out, m, verify); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "wrote %s\n", out)
	return rep, nil
}

// exportSidecar is the sidecar export of m (not changed) against base into dir.
func exportSidecar(log io.Writer, m, base *onnxpb.ModelProto, dir, task string, p *parity) (*export.SidecarReport, error) {
	rep, err := export.SidecarWith(m, base, dir, task, export.SidecarOptions{Verify: p.verify})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "wrote %s\n", rep.Model)
	return rep, nil
}

// loadBase loads the base model (--base, or the path inject recorded) and checks that it
// is the one the model was injected from.
func loadBase(c *cli.Context, m *onnxpb.ModelProto, modelPath string) (string, *onnxpb.ModelProto, error) {
	p := c.String("base")
	if p == "" {
		p, _ = onnxio.Metadata(m, meta.KeyBasePath)
		if p == "" {
			return "", nil, fmt.Errorf("%s records no base model path; give --base BASE (the model `sptctl inject` was run on)", modelPath)
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(modelPath), p)
		}
		fmt.Fprintf(c.App.ErrWriter, "base model: %s (recorded by inject)\n", p)
	}
	base, err := onnxio.Load(p)
	if err != nil {
		if c.String("base") == "" {
			return "", nil, fmt.Errorf("base model recorded by inject: %w; give --base BASE", err)
		}
		return "", nil, err
	}
	plan, err := export.Plan(m)
	if err != nil {
		return "", nil, err
	}
	if err := export.CheckBase(plan, base); err != nil {
		return "", nil, fmt.Errorf("%s: %w", p, err)
	}
	return p, base, nil
}

// parityInputs are the batches the parity check runs: --samples images of --data (the
// model's preprocessing), or seeded random ones, in the model's batch size.
func parityInputs(c *cli.Context, m *onnxpb.ModelProto, modelPath string) ([]ort.Tensor, error) {
	return parityBatches(c.App.ErrWriter, m, modelPath, c.String("data"), c.String("split"), c.Int("samples"))
}

// parityBatches are n parity inputs for the model m at modelPath: images of split of
// the data folder dir (none: seeded random inputs).
func parityBatches(log io.Writer, m *onnxpb.ModelProto, modelPath, dir, split string, n int) ([]ort.Tensor, error) {
	ins, _, err := ort.Peek(modelPath) // only for its input's shape
	if err != nil {
		return nil, err
	}
	in, err := imageInput(ins)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", modelPath, err)
	}
	if dir != "" {
		p, how, err := modelPreprocess(m, in)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", modelPath, err)
		}
		fmt.Fprintf(log, "parity samples: %d images of %s, split %s; preprocessing %s\n", n, dir, split, how)
		return dataBatches(dir, split, p, in, n)
	}
	rng := rand.New(rand.NewPCG(0x5350, 0x54))
	var xs []ort.Tensor
	for done := 0; done < n; {
		b := in.batchFor(n - done)
		x := ort.Tensor{Shape: []int64{int64(b), in.C, in.H, in.W}, Data: make([]float32, int64(b)*in.C*in.H*in.W)}
		for i := range x.Data {
			x.Data[i] = float32(rng.NormFloat64())
		}
		xs = append(xs, x)
		done += b
	}
	return xs, nil
}

// dataBatches preprocesses the first n images of a split into model batches (a fixed
// batch size is filled up with copies of the last image).
func dataBatches(dir, splitName string, p meta.Preprocess, in *imageIn, n int) ([]ort.Tensor, error) {
	ds, err := data.Open(dir)
	if err != nil {
		return nil, err
	}
	split, err := ds.Split(splitName)
	if err != nil {
		return nil, err
	}
	n = min(n, split.Len())
	if n == 0 {
		return nil, fmt.Errorf("data %s: split %s is empty", dir, splitName)
	}
	b := in.batchFor(n)
	it := data.NewLoader(split, p, b, false, 0, 0).Epoch(nil, 0, 0)
	defer it.Close()
	size := data.TensorSize(p)
	var xs []ort.Tensor
	for done := 0; done < n; {
		bt, ok, err := it.Next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		rows := min(bt.N, n-done)
		x := ort.Tensor{Shape: []int64{int64(b), in.C, in.H, in.W}, Data: make([]float32, b*size)}
		copy(x.Data, bt.Images[:rows*size])
		for j := rows; j < b; j++ {
			copy(x.Data[j*size:(j+1)*size], bt.Images[(rows-1)*size:rows*size])
		}
		xs = append(xs, x)
		done += rows
	}
	return xs, nil
}

// ortRun runs a model file with ONNX Runtime (the settings' threads) on x and returns
// its first output.
func ortRun(path string, x ort.Tensor, cs computeSettings) (ort.Tensor, error) {
	ys, err := ortRunAll(path, []ort.Tensor{x}, cs)
	if err != nil {
		return ort.Tensor{}, err
	}
	return ys[0], nil
}

// ortRunAll runs a model file with ONNX Runtime (the settings' threads, and opts) on
// each of xs in one session and returns its first output for each.
func ortRunAll(path string, xs []ort.Tensor, cs computeSettings, opts ...ort.Option) ([]ort.Tensor, error) {
	s, err := ort.Open(path, append([]ort.Option{cs.ort()}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	ins, outs := s.Inputs(), s.Outputs()
	if len(ins) != 1 {
		return nil, fmt.Errorf("%s: model has %d inputs, want 1", path, len(ins))
	}
	ys := make([]ort.Tensor, len(xs))
	for i, x := range xs {
		res, err := s.Run(map[string]ort.Tensor{ins[0].Name: x})
		if err != nil {
			return nil, err
		}
		ys[i] = res[outs[0].Name]
	}
	return ys, nil
}

// compareRuns compares what gave for the inputs xs (gots) with refs: it fails, with
// the numbers, when the relative difference passes parityLimit.
func compareRuns(what string, xs, gots, refs []ort.Tensor) (parityResult, error) {
	r := parityResult{What: what}
	if len(gots) != len(refs) {
		return r, fmt.Errorf("parity check: %s gave %d outputs for %d inputs", what, len(gots), len(refs))
	}
	var maxAbs, maxRef float64
	for i, x := range xs {
		got, want := gots[i], refs[i]
		if len(got.Data) != len(want.Data) || fmt.Sprint(got.Shape) != fmt.Sprint(want.Shape) {
			return r, fmt.Errorf("parity check failed: %s gives shape %v, the trained model %v; nothing written", what, got.Shape, want.Shape)
		}
		for j := range got.Data {
			d := math.Abs(float64(got.Data[j]) - float64(want.Data[j]))
			if math.IsNaN(d) {
				d = math.Inf(1)
			}
			maxAbs = max(maxAbs, d)
			maxRef = max(maxRef, math.Abs(float64(want.Data[j])))
		}
		r.Inputs += int(x.Shape[0])
	}
	r.MaxAbs, r.Rel = maxAbs, maxAbs
	if maxRef > 0 {
		r.Rel = maxAbs / maxRef
	}
	if !(r.Rel <= parityLimit) {
		return r, fmt.Errorf("parity check failed: %s differs from ONNX Runtime on the trained model by max |a−b| %.3g, relative %.3g > %g (on %d inputs); nothing written",
			what, r.MaxAbs, r.Rel, parityLimit, r.Inputs)
	}
	return r, nil
}

// imageIn is a model's image input.
type imageIn struct {
	Name    string
	Batch   int64 // fixed batch size, 0 if dynamic
	C, H, W int64
}

// batchFor is the batch size to run n more examples with.
func (in *imageIn) batchFor(n int) int {
	if in.Batch > 0 {
		return int(in.Batch)
	}
	return n
}

func (in *imageIn) String() string {
	b := "?"
	if in.Batch > 0 {
		b = fmt.Sprint(in.Batch)
	}
	return fmt.Sprintf("%q [%s %d %d %d]", in.Name, b, in.C, in.H, in.W)
}

// imageInput checks that a model's inputs (ort.Session.Inputs, ort.Peek) are one
// float32 image input [N, C, H, W] of known C, H and W.
func imageInput(ins []ort.IOInfo) (*imageIn, error) {
	if len(ins) != 1 {
		names := make([]string, len(ins))
		for i, x := range ins {
			names[i] = x.String()
		}
		return nil, fmt.Errorf("model has %d inputs (%s); want one image input", len(ins), strings.Join(names, ", "))
	}
	x := ins[0]
	if x.Type != "float32" || len(x.Shape) != 4 || x.Shape[1] <= 0 || x.Shape[2] <= 0 || x.Shape[3] <= 0 {
		return nil, fmt.Errorf("input %s is not a float32 image batch [N C H W] of known C, H, W", x)
	}
	return &imageIn{Name: x.Name, Batch: max(x.Shape[0], 0), C: x.Shape[1], H: x.Shape[2], W: x.Shape[3]}, nil
}

// modelPreprocess is the preprocessing the model records (meta.KeyPreprocess), or the
// default for its input; how says which.
func modelPreprocess(m *onnxpb.ModelProto, in *imageIn) (meta.Preprocess, string, error) {
	var p meta.Preprocess
	ok, err := meta.Get(m, meta.KeyPreprocess, &p)
	if err != nil {
		return p, "", err
	}
	return choosePreprocess(p, ok, in)
}

func choosePreprocess(p meta.Preprocess, ok bool, in *imageIn) (meta.Preprocess, string, error) {
	if err := checkImageSize(in.C, in.H, in.W); err != nil {
		return p, "", fmt.Errorf("input %s: %w", in.Name, err)
	}
	if !ok {
		p, err := data.InputPreprocess(in.C, in.H, in.W)
		if err != nil {
			return p, "", fmt.Errorf("input %s: %w", in.Name, err)
		}
		return p, fmt.Sprintf("default for a %d-channel %dx%d input (mean %v, std %v; the model records none)", in.C, in.H, in.W, p.Mean, p.Std), nil
	}
	if err := data.CheckPreprocess(p); err != nil {
		return p, "", fmt.Errorf("metadata %s: %w", meta.KeyPreprocess, err)
	}
	if int64(p.Channels) != in.C || int64(p.Height) != in.H || int64(p.Width) != in.W {
		return p, "", fmt.Errorf("metadata %s is for %dx%dx%d images, but input %s takes %dx%dx%d",
			meta.KeyPreprocess, p.Channels, p.Height, p.Width, in.Name, in.C, in.H, in.W)
	}
	return p, fmt.Sprintf("from the model (%s: %dx%dx%d, mean %v, std %v)", meta.KeyPreprocess, p.Channels, p.Height, p.Width, p.Mean, p.Std), nil
}
