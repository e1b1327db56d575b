package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/sensitivity"
	"github.com/sptctl/sptctl/surgery"
	"github.com/sptctl/sptctl/train"
)

func tuneCommand() *cli.Command {
	return &cli.Command{
		Name:  "tune",
		Usage: "the whole pipeline: sensitivity, allocate, inject, train, export, eval",
		Description: "tune runs every stage on one task and writes into --out:\n" +
			"  scores.safetensors, sensitivity.png   where the sensitive weights are\n" +
			"  plan.json                             where the budget went\n" +
			"  tunable.onnx, trained.onnx            the injected model, before and after training\n" +
			"  merged.onnx                           the task's weights folded into the base graph\n" +
			"  sidecar/base.data, sidecar/TASK.*     the task as a small file beside a shared base\n" +
			"  report.json, report.md                accuracy, trainable parameters, time per stage\n" +
			"Each stage is the function behind the sptctl command of the same name; their flags are repeated here.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "base model (ONNX)", Required: true},
			&cli.StringFlag{Name: "data", Usage: "task data folder", Required: true},
			&cli.StringFlag{Name: "out", Usage: "output folder", Required: true},
			&cli.StringFlag{Name: "task", Usage: "task name for the sidecar (default: the data folder's name)"},
			&cli.StringFlag{Name: "budget", Value: "0.4M", Usage: "trainable parameters (spt)"},
			&cli.StringFlag{Name: "type", Value: "lora", Usage: "structured module: " + moduleTypes()},
			&cli.StringFlag{Name: "strategy", Value: "spt", Usage: strings.Join(strategies(), " | ")},
			&cli.IntFlag{Name: "rank", Value: 8, Usage: "rank of the structured modules"},
			&cli.IntFlag{Name: "sens-batches", Value: 16, Usage: "sensitivity batches"},
			&cli.IntFlag{Name: "sens-batch-size", Value: 32, Usage: "sensitivity batch size"},
			&cli.StringFlag{Name: "head", Value: defaultHead, Usage: "sensitivity's head: probe | random | zero-mean (spt; training starts from a probe or zero-mean head); " +
				"given explicitly with another --strategy, the head training starts from (probe, zero-mean: fitted first as sensitivity would; random or not given: a fresh head)"},
			&cli.IntFlag{Name: "head-seeds", Value: 1, Usage: "average the sensitivity of this many random heads (spt; implies --head random)"},
			&cli.StringFlag{Name: "train-split", Value: "train"},
			&cli.StringFlag{Name: "val-split", Value: "val"},
			&cli.StringFlag{Name: "test-split", Value: "test"},
			&cli.IntFlag{Name: "epochs", Value: 100},
			&cli.IntFlag{Name: "batch-size", Value: 64},
			&cli.Float64Flag{Name: "lr", Value: 1e-3},
			&cli.Float64Flag{Name: "weight-decay", Value: 1e-4},
			&cli.IntFlag{Name: "warmup", Value: 10, Usage: "warm-up epochs"},
			&cli.Float64Flag{Name: "dropout", Value: 0.1, Usage: "branch dropout"},
			&cli.Int64Flag{Name: "seed"},
			&cli.BoolFlag{Name: "json", Usage: "print report.json to stdout"},
			&cli.StringFlag{Name: "quantize", Usage: "also export the merged model quantized (`int8` or int4) and evaluate it"},
			threadsFlag(bothThreads),
			precisionFlag(),
		},
		Action: runTune,
	}
}

// tuneReport is report.json.
type tuneReport struct {
	Model     string            `json:"model"`
	Data      string            `json:"data"`
	Out       string            `json:"out"`
	Strategy  string            `json:"strategy"`
	Type      string            `json:"type"`
	Backbone  int64             `json:"backbone_params"`
	Trainable int64             `json:"trainable"`
	Share     float64           `json:"trainable_share"` // of the backbone
	Plan      json.RawMessage   `json:"plan"`
	Before    float64           `json:"top1_before"` // untrained task head, test split
	After     float64           `json:"top1_after"`  // trained model, test split
	Merged    float64           `json:"top1_merged"`
	Sidecar   float64           `json:"top1_sidecar"`
	TestN     int               `json:"test_n"`
	Train     json.RawMessage   `json:"train"`
	Stages    []stageTime       `json:"stages"`
	Files     map[string]string `json:"files"`
	// Allocation is the plan as a block × layer table (where the budget went).
	Allocation string `json:"allocation"`
	// Quantized is the quantized merged export (tune --quantize), or nil.
	Quantized *tuneQuantized `json:"quantized,omitempty"`
}

type stageTime struct {
	Stage   string  `json:"stage"`
	Seconds float64 `json:"seconds"`
}

func runTune(c *cli.Context) error {
	a := tuneArgs{Model: c.String("model"), Data: c.String("data"), Out: c.String("out"), Task: c.String("task"),
		Budget: c.String("budget"), Type: c.String("type"), Strategy: c.String("strategy"), Rank: c.Int("rank"),
		SensBatches: c.Int("sens-batches"), SensBatchSize: c.Int("sens-batch-size"), Head: scoringHead(c), HeadSet: c.IsSet("head"), HeadSeeds: c.Int("head-seeds"),
		TrainSplit: c.String("train-split"), ValSplit: c.String("val-split"), TestSplit: c.String("test-split"),
		Epochs: c.Int("epochs"), BatchSize: c.Int("batch-size"), LR: c.Float64("lr"), WeightDecay: c.Float64("weight-decay"),
		Warmup: c.Int("warmup"), Dropout: c.Float64("dropout"), Seed: c.Int64("seed"), Quantize: c.String("quantize")}
	if a.Quantize != "" {
		opt, err := schemeOptions(a.Quantize)
		if err == nil {
			err = runtimeSupports(opt)
		}
		if err != nil {
			return usagef("tune: %v", err)
		}
	}
	if a.Task == "" {
		a.Task = taskName(a.Data)
	}
	if err := checkTune(c, a.Task); err != nil {
		return err
	}
	var err error
	if a.Compute, err = computeFrom(c, c.App.ErrWriter, true); err != nil {
		return err
	}
	ctx, stop := interruptible()
	defer stop()
	r, err := tune(ctx, c.App.ErrWriter, a)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFile(r.Files["report"], append(b, '\n')); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(a.Out, "report.md"), []byte(r.markdown())); err != nil {
		return err
	}
	if c.Bool("json") {
		_, err := c.App.Writer.Write(append(b, '\n'))
		return err
	}
	fmt.Fprint(c.App.Writer, r.markdown())
	return nil
}

// tuneArgs are tune's settings (its flags).
type tuneArgs struct {
	Model, Data, Out, Task          string
	Budget, Type, Strategy          string
	Rank                            int
	SensBatches, SensBatchSize      int
	Head                            string // sensitivity's head (spt)
	HeadSet                         bool   // --head was given: other strategies start from that head too
	HeadSeeds                       int
	TrainSplit, ValSplit, TestSplit string
	Epochs, BatchSize, Warmup       int
	LR, WeightDecay, Dropout        float64
	Seed                            int64
	Quantize                        string // "", int8 or int4
	Compute                         computeSettings
}

// taskName is a task name made from a data folder's name.
func taskName(dataDir string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, filepath.Base(filepath.Clean(dataDir)))
}

// tuneRun is one tune: the base model, loaded once, and the data set, opened once,
// go through the stages as values; each stage writes its file for the user.
type tuneRun struct {
	a    tuneArgs
	log  io.Writer
	r    *tuneReport
	base *onnxpb.ModelProto
	g    *surgery.Graph
	v    *surgery.ViT
	pre  meta.Preprocess
	ds   *data.Dataset
	test *data.Split
}

func (t *tuneRun) file(name string) string { return filepath.Join(t.a.Out, name) }

// stage runs one stage, timed, under a header in the log.
func (t *tuneRun) stage(name string, f func() error) error {
	fmt.Fprintf(t.log, "\n== %s\n", name)
	start := time.Now()
	err := f()
	t.r.Stages = append(t.r.Stages, stageTime{name, time.Since(start).Seconds()})
	if err != nil {
		return fmt.Errorf("tune: %s: %w", name, err)
	}
	return nil
}

// tune runs every stage on one task and returns the report (report.json and
// report.md are the caller's to write).
func tune(ctx context.Context, log io.Writer, a tuneArgs) (*tuneReport, error) {
	if err := os.MkdirAll(a.Out, 0o755); err != nil {
		return nil, err
	}
	t := &tuneRun{a: a, log: log, r: &tuneReport{Model: a.Model, Data: a.Data, Out: a.Out, Strategy: a.Strategy, Type: a.Type,
		Files: map[string]string{}}}
	err := t.stage("inspect", func() error {
		var err error
		if t.base, t.g, t.v, err = loadViT(a.Model); err != nil {
			return err
		}
		t.r.Backbone = inspectLoaded(a.Model, t.base, t.g, t.v).Backbone
		return nil
	})
	if err != nil {
		return nil, err
	}
	if t.ds, err = data.Open(a.Data); err != nil {
		return nil, err
	}
	if t.test, err = t.ds.Split(a.TestSplit); err != nil {
		return nil, err
	}
	plan, err := t.allocate(ctx)
	if err != nil {
		return nil, err
	}
	trained, err := t.train(ctx, plan)
	if err != nil {
		return nil, err
	}
	if err := t.export(trained); err != nil {
		return nil, err
	}
	for k, v := range map[string]string{"plan": "plan.json", "tunable": "tunable.onnx", "trained": "trained.onnx", "merged": "merged.onnx", "report": "report.json"} {
		t.r.Files[k] = t.file(v)
	}
	t.r.Files["sidecar"] = t.sidecarModel()
	return t.r, nil
}

// allocate runs the sensitivity stage (spt) and the allocate stage.
func (t *tuneRun) allocate(ctx context.Context) (*inject.Plan, error) {
	a := t.a
	opt := inject.DefaultOptions()
	opt.Type, opt.Strategy, opt.Rank = inject.Type(a.Type), inject.Strategy(a.Strategy), a.Rank
	var scores sensitivity.Scores
	var info *sensitivity.Info
	if opt.Strategy == inject.SPT {
		var err error
		if opt.Budget, err = inject.ParseBudget(a.Budget, inject.BackboneParams(t.v, t.g)); err != nil {
			return nil, usagef("--budget: %v", err)
		}
		err = t.stage("sensitivity", func() error {
			split, err := t.ds.Split(a.TrainSplit)
			if err != nil {
				return err
			}
			if t.pre, err = preprocessFor(t.base, surgery.Image{Channels: t.v.Channels, Height: t.v.Height, Width: t.v.Width}, t.log); err != nil {
				return err
			}
			w := a.Compute.worker()
			defer w.Close()
			sa := sensitivityArgs{Opt: sensitivity.Options{Batches: a.SensBatches, BatchSize: a.SensBatchSize, Classes: t.ds.NumClasses(),
				HeadSeed: a.Seed, Seed: a.Seed, Head: a.Head, HeadSeeds: a.HeadSeeds,
				// the Σ grad² sums wait between batches in a temporary file beside the outputs (see sensitivity.Options.SpillDir)
				SpillDir: filepath.Dir(t.file("scores.safetensors"))}, Top: 0.004, Out: t.file("scores.safetensors"), Plot: t.file("sensitivity.png"), Data: a.Data}
			rep, s, err := scoreSensitivity(ctx, t.log, a.Compute.engine(w), t.base, t.v, split, t.pre, sa)
			if err != nil {
				return err
			}
			scores, info = s, &rep.Info
			return nil
		})
		if err != nil {
			return nil, err
		}
		t.r.Files["scores"], t.r.Files["sensitivity_plot"] = t.file("scores.safetensors"), t.file("sensitivity.png")
	} else {
		opt.Classes = t.ds.NumClasses()
		if a.HeadSet && a.Head != inject.HeadRandom {
			if err := t.stage("fit head", func() error {
				var err error
				info, err = t.fitHead(ctx)
				return err
			}); err != nil {
				return nil, err
			}
		}
	}
	var plan *inject.Plan
	err := t.stage("allocate", func() error {
		var err error
		if plan, err = allocatePlan(t.log, t.g, t.v, scores, info, opt, false, t.file("plan.json")); err != nil {
			return err
		}
		var b bytes.Buffer
		if err := writeJSON(&b, plan.Summary()); err != nil {
			return err
		}
		t.r.Plan = b.Bytes()
		return nil
	})
	if err != nil {
		return nil, err
	}
	t.r.Trainable = plan.Summary().Trainable
	var tb strings.Builder
	printPlan(&tb, plan)
	t.r.Allocation = tb.String()
	t.r.Share = float64(t.r.Trainable) / float64(max(t.r.Backbone, 1))
	return plan, nil
}

// fitHead fits the head --head names (probe or zero-mean) as the sensitivity stage
// would, for a baseline to start from: the returned Info carries it into the plan.
func (t *tuneRun) fitHead(ctx context.Context) (*sensitivity.Info, error) {
	a := t.a
	split, err := t.ds.Split(a.TrainSplit)
	if err != nil {
		return nil, err
	}
	if t.pre, err = preprocessFor(t.base, surgery.Image{Channels: t.v.Channels, Height: t.v.Height, Width: t.v.Width}, t.log); err != nil {
		return nil, err
	}
	w := a.Compute.worker()
	defer w.Close()
	info, err := sensitivity.FitHead(ctx, a.Compute.engine(w), t.base, split, t.pre, sensitivity.Options{BatchSize: a.SensBatchSize,
		Classes: t.ds.NumClasses(), HeadSeed: a.Seed, Seed: a.Seed, Head: a.Head})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(t.log, "%s head fitted%s\n", info.Head, headNote(info))
	return &info, nil
}

// train runs the inject stage, evaluates the untrained model, trains it and evaluates
// the trained one; it returns the trained model.
func (t *tuneRun) train(ctx context.Context, plan *inject.Plan) (*onnxpb.ModelProto, error) {
	a := t.a
	var tunable *onnxpb.ModelProto
	err := t.stage("inject", func() error {
		basePath, err := filepath.Abs(a.Model)
		if err != nil {
			return err
		}
		opt := inject.ApplyOptions{Seed: a.Seed, Dropout: float32(a.Dropout), BasePath: basePath}
		var n int64
		if tunable, n, err = injectPlan(t.base, a.Model, plan, t.file("plan.json"), opt); err != nil {
			return err
		}
		if err := onnxio.Save(t.file("tunable.onnx"), tunable); err != nil {
			return err
		}
		fmt.Fprintf(t.log, "wrote %s: %s trainable parameters\n", t.file("tunable.onnx"), commas(n))
		return nil
	})
	if err != nil {
		return nil, err
	}
	if t.r.Before, _, err = t.eval("eval untrained", t.file("tunable.onnx")); err != nil {
		return nil, err
	}
	var trained *onnxpb.ModelProto
	err = t.stage("train", func() error {
		g := surgery.New(tunable)
		in, err := surgery.ImageInput(g)
		if err != nil {
			return err
		}
		pre, err := preprocessFor(tunable, in, t.log)
		if err != nil {
			return err
		}
		classes := surgery.Classes(g)
		_, trainSplit, err := openSplit(a.Data, a.TrainSplit, classes)
		if err != nil {
			return err
		}
		var valSplit *data.Split
		if a.ValSplit != "" {
			if _, valSplit, err = openSplit(a.Data, a.ValSplit, classes); err != nil {
				return err
			}
		}
		out := t.file("trained.onnx")
		cfg := train.Config{Epochs: a.Epochs, BatchSize: a.BatchSize, LR: a.LR, MinLR: 1e-8, WeightDecay: a.WeightDecay,
			WarmupEpochs: a.Warmup, Seed: a.Seed, ValEvery: 10, Checkpoint: out + ".ckpt"}
		var rep *trainReport
		if trained, rep, err = trainModel(ctx, t.log, tunable, t.file("tunable.onnx"), trainSplit, valSplit, a.ValSplit, pre, cfg, a.Compute); err != nil {
			return err
		}
		if err := onnxio.Save(out, trained); err != nil {
			return err
		}
		rep.Out = out
		var b bytes.Buffer
		if err := writeJSON(&b, rep); err != nil {
			return err
		}
		t.r.Train = b.Bytes()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if t.r.After, t.r.TestN, err = t.eval("eval trained", t.file("trained.onnx")); err != nil {
		return nil, err
	}
	return trained, nil
}

func (t *tuneRun) sidecarModel() string { return filepath.Join(t.a.Out, "sidecar", t.a.Task+".onnx") }

// export runs the merge and sidecar exports of the trained model (checked against it
// once) and evaluates both.
func (t *tuneRun) export(trained *onnxpb.ModelProto) error {
	trainedPath := t.file("trained.onnx")
	xs, err := parityBatches(t.log, trained, trainedPath, "", "", 4)
	if err != nil {
		return err
	}
	pc, err := checkTrained(t.log, trainedPath, xs, t.a.Compute)
	if err != nil {
		return err
	}
	if err := t.stage("export merged", func() error {
		// The merge uses up its models: give it copies (the sidecar needs both).
		_, err := exportMerged(t.log, proto.Clone(trained).(*onnxpb.ModelProto), proto.Clone(t.base).(*onnxpb.ModelProto), t.file("merged.onnx"), pc)
		return err
	}); err != nil {
		return err
	}
	if err := t.stage("export sidecar", func() error {
		_, err := exportSidecar(t.log, trained, t.base, t.file("sidecar"), t.a.Task, pc)
		return err
	}); err != nil {
		return err
	}
	if t.r.Merged, _, err = t.eval("eval merged", t.file("merged.onnx")); err != nil {
		return err
	}
	if t.r.Sidecar, _, err = t.eval("eval sidecar", t.sidecarModel()); err != nil {
		return err
	}
	if t.a.Quantize != "" {
		return t.quantize(trained, pc)
	}
	return nil
}

// eval is an eval stage on the test split.
func (t *tuneRun) eval(name, path string) (top1 float64, n int, err error) {
	var res *evalResult
	err = t.stage(name, func() error {
		var err error
		res, err = evalFile(context.Background(), t.log, path, t.ds, t.test, t.a.Data, t.a.Compute)
		return err
	})
	if err != nil {
		return 0, 0, err
	}
	return res.Top1, res.N, nil
}

func writeFile(path string, b []byte) error {
	return onnxio.WriteFileAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err })
}

func (r *tuneReport) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# sptctl tune: %s on %s\n\n", filepath.Base(r.Model), r.Data)
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| method | %s (%s) |\n", r.Strategy, r.Type)
	fmt.Fprintf(&b, "| trainable parameters | %s (%.2f%% of the %s-parameter backbone) |\n", commas(r.Trainable), 100*r.Share, commas(r.Backbone))
	fmt.Fprintf(&b, "| test top-1 before training (new head) | %.2f%% |\n", 100*r.Before)
	fmt.Fprintf(&b, "| test top-1 after training | %.2f%% (%d images) |\n", 100*r.After, r.TestN)
	fmt.Fprintf(&b, "| merged model, ONNX Runtime | %.2f%% |\n", 100*r.Merged)
	fmt.Fprintf(&b, "| sidecar model, ONNX Runtime | %.2f%% |\n", 100*r.Sidecar)
	if q := r.Quantized; q != nil {
		fmt.Fprintf(&b, "| %s merged model, ONNX Runtime | %.2f%% (%.2f MB, %.2fx the fp32 merged file) |\n", q.Scheme, 100*q.Top1, float64(q.Bytes)/1e6, float64(q.Bytes)/float64(max(q.MergedBytes, 1)))
	}
	b.WriteString("\n")
	if r.Allocation != "" {
		fmt.Fprintf(&b, "where the trainable parameters went:\n\n```\n%s```\n\n", r.Allocation)
	}
	fmt.Fprintf(&b, "| stage | seconds |\n|---|---:|\n")
	for _, s := range r.Stages {
		fmt.Fprintf(&b, "| %s | %.1f |\n", s.Stage, s.Seconds)
	}
	fmt.Fprintf(&b, "\nfiles:\n")
	for _, k := range []string{"merged", "quantized", "sidecar", "trained", "plan", "sensitivity_plot", "report"} {
		if f, ok := r.Files[k]; ok {
			fmt.Fprintf(&b, "- %s: %s\n", k, f)
		}
	}
	return b.String()
}
