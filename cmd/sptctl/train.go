package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/osmem"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
	"github.com/sptctl/sptctl/train"
)

func trainCommand() *cli.Command {
	return &cli.Command{
		Name:  "train",
		Usage: "train the parameters an injected model marks trainable",
		Description: "train runs AdamW (no weight decay on 1-D tensors and the class token) with a\n" +
			"cosine schedule and linear warm-up on the initializers `sptctl inject` made\n" +
			"trainable, in train mode (branch dropout on). It checkpoints after every epoch;\n" +
			"Ctrl-C finishes the current step, checkpoints and says how to resume. The result\n" +
			"is the injected graph with trained values, ready for `export` and `eval`.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "injected model from `sptctl inject`", Required: true},
			&cli.StringFlag{Name: "data", Usage: "task data folder", Required: true},
			&cli.StringFlag{Name: "train-split", Usage: "split to train on (e.g. train800val200 for a final run)", Value: "train"},
			&cli.StringFlag{Name: "val-split", Usage: "split to validate on (\"\" for none; e.g. test for a final run)", Value: "val"},
			&cli.IntFlag{Name: "epochs", Value: 100},
			&cli.IntFlag{Name: "batch-size", Value: 64},
			&cli.Float64Flag{Name: "lr", Usage: "peak learning rate", Value: 1e-3},
			&cli.Float64Flag{Name: "min-lr", Usage: "learning rate at the end of the cosine", Value: 1e-8},
			&cli.Float64Flag{Name: "weight-decay", Value: 1e-4},
			&cli.IntFlag{Name: "warmup", Usage: "warm-up epochs", Value: 10},
			&cli.IntFlag{Name: "val-every", Usage: "validate every N epochs (0: after the last only)", Value: 10},
			&cli.Int64Flag{Name: "seed"},
			&cli.StringFlag{Name: "out", Usage: "trained model to write", Value: "trained.onnx"},
			&cli.StringFlag{Name: "checkpoint", Usage: "checkpoint file (default: OUT.ckpt)"},
			&cli.BoolFlag{Name: "resume", Usage: "continue from the checkpoint"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
			threadsFlag(libtorchThreads),
			precisionFlag(),
		},
		Action: func(c *cli.Context) error {
			r, err := runTrain(c)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(c.App.Writer, r)
			}
			fmt.Fprintf(c.App.Writer, "trained %s parameters for %d steps in %.1fs: train top-1 %.2f%%", commas(r.Trainable), r.Steps, r.Seconds, 100*r.TrainTop1)
			if r.ValTop1 >= 0 {
				fmt.Fprintf(c.App.Writer, ", %s top-1 %.2f%%", r.ValSplit, 100*r.ValTop1)
			}
			fmt.Fprintf(c.App.Writer, "\nwrote %s\n", r.Out)
			return nil
		},
	}
}

type trainReport struct {
	Out          string  `json:"out"`
	Trainable    int64   `json:"trainable"`
	Steps        int     `json:"steps"`
	TrainTop1    float64 `json:"train_top1"`
	ValTop1      float64 `json:"val_top1"`
	ValSplit     string  `json:"val_split"`
	FinalLoss    float64 `json:"final_loss"`
	MicroBatched bool    `json:"micro_batched"`
	Seconds      float64 `json:"seconds"`
	Precision    string  `json:"precision"`
}

func runTrain(c *cli.Context) (*trainReport, error) {
	if err := checkTrain(c); err != nil {
		return nil, err
	}
	cs, err := computeFrom(c, c.App.ErrWriter, true)
	if err != nil {
		return nil, err
	}
	path := c.String("model")
	m, in, classes, err := loadModel(path)
	if err != nil {
		return nil, err
	}
	names, err := meta.Trainable(m)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s has nothing to train: make it with `sptctl inject`", path)
	}
	pre, err := preprocessFor(m, in, c.App.ErrWriter)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	_, trainSplit, err := openSplit(c.String("data"), c.String("train-split"), classes)
	if err != nil {
		return nil, err
	}
	var valSplit *data.Split
	if name := c.String("val-split"); name != "" {
		if _, valSplit, err = openSplit(c.String("data"), name, classes); err != nil {
			return nil, err
		}
	}
	out := c.String("out")
	cfg := train.Config{Epochs: c.Int("epochs"), BatchSize: c.Int("batch-size"), LR: c.Float64("lr"), MinLR: c.Float64("min-lr"),
		WeightDecay: c.Float64("weight-decay"), WarmupEpochs: c.Int("warmup"), Seed: c.Int64("seed"), ValEvery: c.Int("val-every"),
		Checkpoint: c.String("checkpoint"), Resume: c.Bool("resume")}
	if cfg.Checkpoint == "" {
		cfg.Checkpoint = out + ".ckpt"
	}
	cfg.Base, _ = onnxio.Metadata(m, meta.KeyBaseFingerprint) // checkpoints of another base are refused
	ctx, stop := interruptible()
	defer stop()
	trained, r, err := trainModel(ctx, c.App.ErrWriter, m, path, trainSplit, valSplit, c.String("val-split"), pre, cfg, cs)
	if errors.Is(err, train.ErrInterrupted) {
		return nil, cli.Exit(fmt.Sprintf("interrupted: checkpoint %s written; run the same command with --resume to continue", cfg.Checkpoint), 130)
	}
	if err != nil {
		return nil, err
	}
	if err := onnxio.Save(out, trained); err != nil {
		return nil, err
	}
	r.Out = out
	return r, nil
}

// trainModel is the train stage: it trains the initializers tunable marks trainable
// and returns the trained model, a copy of tunable (which is not changed) holding the
// trained values and the preprocessing, with the report (its Out left empty).
func trainModel(ctx context.Context, log io.Writer, tunable *onnxpb.ModelProto, path string, trainSplit, valSplit *data.Split, valName string, pre meta.Preprocess, cfg train.Config, cs computeSettings) (*onnxpb.ModelProto, *trainReport, error) {
	names, err := meta.Trainable(tunable)
	if err != nil {
		return nil, nil, err
	}
	w := cs.worker()
	defer w.Close()
	var prog engine.Program
	if err := w.Do(func() error {
		prog, err = w.Compile(tunable, engine.Options{Trainable: names, Precision: cs.Precision.Precision})
		return err
	}); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	defer w.Do(func() error { prog.Close(); return nil })
	if b := prog.FixedBatch(); b > 0 && b != cfg.BatchSize {
		fmt.Fprintf(log, "%s has a fixed batch size of %d: each batch of %d runs as micro-batches of %d with gradients accumulated (same result as one batch)\n", path, b, cfg.BatchSize, b)
	}
	bar := newProgress(log, "train")
	restore := osmem.KeepFreedHeap() // each step's activations reused, not faulted in again
	res, err := train.Fit(ctx, w, prog, trainSplit, valSplit, pre, cfg, func(e train.Event) {
		if e.Val != nil {
			fmt.Fprintf(log, "epoch %d/%d: loss %.4f, train top-1 %.2f%%, %s top-1 %.2f%%\n", e.Epoch, e.Epochs, e.Loss, 100*e.Accuracy, valName, 100**e.Val)
			return
		}
		bar.update(e.Step, e.Steps, fmt.Sprintf("epoch %d/%d loss %.4f acc %.1f%% %.0f img/s", e.Epoch, e.Epochs, e.Loss, 100*e.Accuracy, e.ImagesPerSecond))
	})
	restore()
	if err != nil {
		return nil, nil, err
	}
	trained := withOwnTensors(tunable, names)
	if err := w.Do(func() error { return prog.WriteBack(trained) }); err != nil {
		return nil, nil, err
	}
	if err := meta.Set(trained, meta.KeyPreprocess, pre); err != nil {
		return nil, nil, err
	}
	onnxio.SetMetadata(trained, meta.KeyPrecision, cs.Precision.Precision.String())
	n := int64(0)
	for _, name := range names {
		if s, ok := prog.ParamShape(name); ok {
			n += onnxio.NumElements(s)
		}
	}
	return trained, &trainReport{Trainable: n, Steps: res.Steps, TrainTop1: res.TrainTop1, ValTop1: res.ValTop1,
		ValSplit: valName, FinalLoss: res.FinalLoss, MicroBatched: res.MicroBatched, Seconds: res.Seconds,
		Precision: cs.Precision.Precision.String()}, nil
}

// withOwnTensors is a copy of m that shares m's tensors except the named ones, which
// it holds as copies (to be overwritten without touching m, or a model m shares them
// with).
func withOwnTensors(m *onnxpb.ModelProto, names []string) *onnxpb.ModelProto {
	c := surgery.ShallowCopy(m)
	own := map[string]bool{}
	for _, n := range names {
		own[n] = true
	}
	for i, t := range c.Graph.Initializer {
		if own[t.GetName()] {
			c.Graph.Initializer[i] = proto.Clone(t).(*onnxpb.TensorProto)
		}
	}
	return c
}
