package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
)

func evalCommand() *cli.Command {
	return &cli.Command{
		Name:  "eval",
		Usage: "top-1 accuracy of a model on a data split, with ONNX Runtime",
		Description: "eval runs the model on every image of the split in batches and counts how often\n" +
			"the largest output is the label. Images are preprocessed as the model records\n" +
			"(sptctl.preprocess metadata), else with the default for its input size. A model\n" +
			"with a fixed batch size gets its last partial batch padded (the padding is not\n" +
			"counted).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "`MODEL` (ONNX)", Required: true},
			&cli.StringFlag{Name: "data", Usage: "`DATA` folder (VTAB-1k lists, ImageFolder or IDX)", Required: true},
			&cli.StringFlag{Name: "split", Usage: "split to evaluate", Value: "test"},
			&cli.IntFlag{Name: "batch-size", Usage: "images per run (a model with a fixed batch size uses its own)", Value: 64},
			&cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON"},
			adapterFlag(),
			threadsFlag(ortThreads),
		},
		Action: runEval,
	}
}

// evalResult is what `eval --json` prints.
type evalResult struct {
	Top1    float64 `json:"top1"`
	N       int     `json:"n"`
	Correct int     `json:"correct"`
	Split   string  `json:"split"`
	Model   string  `json:"model"`
}

// openSession opens the model at modelPath with ONNX Runtime (the threads of cs), with
// the --adapter of c if one is given: run runs the model (through the adapter), done
// closes both.
func openSession(c *cli.Context, modelPath string, cs computeSettings) (s *ort.Session, run func(map[string]ort.Tensor) (map[string]ort.Tensor, error), done func(), err error) {
	md, err := onnxio.PeekMetadata(modelPath)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := export.CheckSidecar(modelPath, md); err != nil {
		return nil, nil, nil, err
	}
	s, err = ort.Open(modelPath, cs.ort())
	if err != nil {
		return nil, nil, nil, err
	}
	run, closeAdapter, err := withAdapter(c, s, modelPath)
	if err != nil {
		s.Close()
		return nil, nil, nil, err
	}
	return s, run, func() { closeAdapter(); s.Close() }, nil
}

func runEval(c *cli.Context) error {
	modelPath, dir := c.String("model"), c.String("data")
	cs, err := threadsFrom(c)
	if err != nil {
		return err
	}
	if err := checkEval(c); err != nil {
		return err
	}
	s, runFn, done, err := openSession(c, modelPath, cs)
	if err != nil {
		return err
	}
	defer done()
	ds, err := data.Open(dir)
	if err != nil {
		return err
	}
	split, err := ds.Split(c.String("split"))
	if err != nil {
		return err
	}
	bs := 0
	if c.IsSet("batch-size") {
		bs = c.Int("batch-size")
	}
	res, err := evaluate(c.Context, c.App.ErrWriter, s, runFn, modelPath, ds, split, dir, bs)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, res)
	}
	fmt.Fprintf(c.App.Writer, "top-1 %.4f (%d/%d) on %s\n", res.Top1, res.Correct, res.N, res.Split)
	return nil
}

// evalFile is the eval stage on a model file without an adapter, with the threads of cs.
func evalFile(ctx context.Context, log io.Writer, modelPath string, ds *data.Dataset, split *data.Split, dir string, cs computeSettings) (*evalResult, error) {
	s, err := ort.Open(modelPath, cs.ort())
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return evaluate(ctx, log, s, s.Run, modelPath, ds, split, dir, 0)
}

// evaluate is the eval stage: the top-1 accuracy of the model open in s (run runs it)
// on a split of the data set ds (folder dir), in batches of bs (0: 64) or the model's
// fixed batch size.
func evaluate(ctx context.Context, log io.Writer, s *ort.Session, runFn func(map[string]ort.Tensor) (map[string]ort.Tensor, error), modelPath string, ds *data.Dataset, split *data.Split, dir string, bs int) (*evalResult, error) {
	in, err := imageInput(s.Inputs())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", modelPath, err)
	}
	md, err := onnxio.PeekMetadata(modelPath)
	if err != nil {
		return nil, err
	}
	var p meta.Preprocess
	raw, ok := md[meta.KeyPreprocess]
	if ok {
		if err := json.Unmarshal([]byte(raw), &p); err != nil {
			return nil, fmt.Errorf("%s: metadata %s: %w", modelPath, meta.KeyPreprocess, err)
		}
	}
	p, how, err := choosePreprocess(p, ok, in)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", modelPath, err)
	}
	fmt.Fprintf(log, "preprocessing: %s\n", how)
	if split.Len() == 0 {
		return nil, fmt.Errorf("data %s: split %s is empty", dir, split.SplitName())
	}
	out := s.Outputs()[0]
	classes := int64(ds.NumClasses())
	if len(out.Shape) == 2 && out.Shape[1] > 0 && classes > out.Shape[1] {
		return nil, fmt.Errorf("data %s has %d classes, but %s's head has %d outputs; evaluate it on a data set of its task", dir, classes, modelPath, out.Shape[1])
	}
	if in.Batch > 0 {
		if bs > 0 && int64(bs) != in.Batch {
			fmt.Fprintf(log, "the model has a fixed batch size of %d; using it\n", in.Batch)
		}
		bs = int(in.Batch)
	} else if bs == 0 {
		bs = 64
	}
	if err := data.CheckBatch(int64(bs), p); err != nil {
		return nil, fmt.Errorf("%s: %w", modelPath, err)
	}
	start := time.Now()
	loader := data.NewLoader(split, p, bs, false, 0, 0)
	batches := loader.Epoch(ctx, 0, 0)
	defer batches.Close()
	size := data.TensorSize(p)
	res := &evalResult{Split: split.SplitName(), Model: modelPath}
	for {
		b, ok, err := batches.Next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		rows := int64(b.N)
		x := ort.Tensor{Shape: []int64{rows, in.C, in.H, in.W}, Data: b.Images}
		if in.Batch > 0 && rows < in.Batch { // pad with zeros; those rows are not counted
			x.Shape[0] = in.Batch
			x.Data = append(b.Images, make([]float32, (in.Batch-rows)*int64(size))...)
		}
		y, err := runFn(map[string]ort.Tensor{in.Name: x})
		if err != nil {
			return nil, err
		}
		logits := y[out.Name]
		if len(logits.Shape) != 2 || logits.Shape[0] != x.Shape[0] || logits.Data == nil {
			return nil, fmt.Errorf("%s: output %s has shape %v; want [batch classes] float32 logits", modelPath, out.Name, logits.Shape)
		}
		k := logits.Shape[1]
		if classes > k {
			return nil, fmt.Errorf("data %s has %d classes, but %s's head has %d outputs; evaluate it on a data set of its task", dir, classes, modelPath, k)
		}
		for i := int64(0); i < rows; i++ {
			row := logits.Data[i*k : (i+1)*k]
			if int64(slices.Index(row, slices.Max(row))) == b.Labels[i] {
				res.Correct++
			}
		}
		res.N += b.N
	}
	res.Top1 = float64(res.Correct) / float64(res.N)
	el := time.Since(start)
	fmt.Fprintf(log, "evaluated %d images in %.1fs (%.0f images/s)\n", res.N, el.Seconds(), float64(res.N)/el.Seconds())
	return res, nil
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:        "run",
		Usage:       "run a model on a .npy input with ONNX Runtime and write its output as .npy",
		Description: "run feeds --input (float32 or int64, C order) to the model's only input and writes\n" + "its first output to --output.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "`MODEL` (ONNX)", Required: true},
			&cli.StringFlag{Name: "input", Usage: "input array `x.npy`", Required: true},
			&cli.StringFlag{Name: "output", Usage: "output array `y.npy` to write", Required: true},
			adapterFlag(),
			threadsFlag(ortThreads),
		},
		Action: func(c *cli.Context) error {
			cs, err := threadsFrom(c)
			if err != nil {
				return err
			}
			if err := checkRun(c); err != nil {
				return err
			}
			modelPath, inPath, outPath := c.String("model"), c.String("input"), c.String("output")
			s, runFn, done, err := openSession(c, modelPath, cs)
			if err != nil {
				return err
			}
			defer done()
			ins := s.Inputs()
			if len(ins) != 1 {
				return fmt.Errorf("%s has %d inputs; run feeds one", modelPath, len(ins))
			}
			want := ins[0]
			a, err := npy.Read(inPath)
			if err != nil {
				return fmt.Errorf("%s cannot feed %s of %s: %w", inPath, describeInput(want), modelPath, err)
			}
			dtype := map[string]string{"<f4": "float32", "<i8": "int64"}[a.Dtype()]
			if dtype != want.Type {
				return fmt.Errorf("%s holds %s, but %s of %s wants %s", inPath, dtype, describeInput(want), modelPath, want.Type)
			}
			fits := want.Shape == nil || len(want.Shape) == len(a.Shape)
			for i := 0; fits && i < len(a.Shape); i++ {
				fits = want.Shape[i] < 0 || want.Shape[i] == a.Shape[i]
			}
			if !fits || len(a.Shape) == 0 {
				return fmt.Errorf("%s has shape %v, but %s of %s does not take it", inPath, a.Shape, describeInput(want), modelPath)
			}
			y, err := runFn(map[string]ort.Tensor{want.Name: {Shape: a.Shape, Data: a.Float32, Int64: a.Int64}})
			if err != nil {
				return err
			}
			outName := s.Outputs()[0].Name
			t := y[outName]
			if err := npy.Write(outPath, &npy.Array{Shape: t.Shape, Float32: t.Data, Int64: t.Int64}); err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "wrote %s: %s %v\n", outPath, outName, t.Shape)
			return nil
		},
	}
}

// describeInput names a model input with its type and shape: input "x" (float32 [? 3 32 32]).
func describeInput(x ort.IOInfo) string {
	shape := "[?]"
	if x.Shape != nil {
		parts := make([]string, len(x.Shape))
		for i, d := range x.Shape {
			parts[i] = "?"
			if d >= 0 {
				parts[i] = fmt.Sprint(d)
			}
		}
		shape = "[" + strings.Join(parts, " ") + "]"
	}
	return fmt.Sprintf("input %q (%s %s)", x.Name, x.Type, shape)
}
