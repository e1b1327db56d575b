package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/osmem"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/sensitivity"
	"github.com/sptctl/sptctl/surgery"
)

func sensitivityCommand() *cli.Command {
	return &cli.Command{
		Name:  "sensitivity",
		Usage: "score every block weight's sensitivity for a task (Σ grad² over a few batches)",
		Description: "sensitivity runs the model in train mode, with a head for the task's classes, on\n" +
			"the first --batches batches of the training split and sums the squared gradients of\n" +
			"the cross-entropy loss for every weight of the transformer blocks. The scores go to\n" +
			"a safetensors file (one tensor per initializer) for `allocate`.\n\n" + headHelp,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "base model (ONNX)", Required: true},
			&cli.StringFlag{Name: "data", Usage: "task data folder (VTAB-1k lists, ImageFolder or IDX)", Required: true},
			&cli.StringFlag{Name: "split", Usage: "split to score on", Value: "train"},
			&cli.IntFlag{Name: "batches", Usage: "batches to accumulate", Value: 16},
			&cli.IntFlag{Name: "batch-size", Usage: "images per batch", Value: 32},
			&cli.IntFlag{Name: "classes", Usage: "task classes (default: from the data)"},
			&cli.StringFlag{Name: "head", Usage: "head the gradients flow through: probe | random | zero-mean", Value: defaultHead},
			&cli.IntFlag{Name: "head-seeds", Usage: "average the scores of this many random heads (implies --head random)", Value: 1},
			&cli.Int64Flag{Name: "head-seed", Usage: "seed of the task head (inject reuses it) or of the probe"},
			&cli.Int64Flag{Name: "seed", Usage: "seed of the batch order"},
			&cli.StringFlag{Name: "out", Usage: "score file to write", Value: "scores.safetensors"},
			&cli.StringFlag{Name: "plot", Usage: "also draw where the sensitive weights are (PNG)"},
			&cli.Float64Flag{Name: "top", Usage: "share of entries counted as sensitive in the summary", Value: 0.004},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
			threadsFlag(libtorchThreads),
			precisionFlag(),
		},
		Action: func(c *cli.Context) error {
			r, err := runSensitivity(c)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(c.App.Writer, r)
			}
			r.Summary.Print(c.App.Writer)
			return nil
		},
	}
}

type sensitivityReport struct {
	Out     string               `json:"out"`
	Info    sensitivity.Info     `json:"info"`
	Summary *sensitivity.Summary `json:"summary"`
	Seconds float64              `json:"seconds"`
}

func runSensitivity(c *cli.Context) (*sensitivityReport, error) {
	if err := checkSensitivity(c); err != nil {
		return nil, err
	}
	// A few large batches, each a forward's worth of activations freed at once: give
	// their memory back to the system as it is freed, not into arenas the next
	// batch's tensors fit poorly (see MapLargeAllocs).
	osmem.MapLargeAllocs(1 << 20)
	cs, err := computeFrom(c, c.App.ErrWriter, true)
	if err != nil {
		return nil, err
	}
	path := c.String("model")
	m, _, v, err := loadViT(path)
	if err != nil {
		return nil, err
	}
	pre, err := preprocessFor(m, surgery.Image{Channels: v.Channels, Height: v.Height, Width: v.Width}, c.App.ErrWriter)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.String("model"), err)
	}
	ds, split, err := openSplit(c.String("data"), c.String("split"), 0)
	if err != nil {
		return nil, err
	}
	classes := c.Int("classes")
	if classes == 0 {
		classes = ds.NumClasses()
	}
	ctx, stop := interruptible()
	defer stop()
	w := cs.worker()
	defer w.Close()
	a := sensitivityArgs{
		Opt: sensitivity.Options{Batches: c.Int("batches"), BatchSize: c.Int("batch-size"), Classes: classes,
			HeadSeed: c.Int64("head-seed"), Seed: c.Int64("seed"), Head: scoringHead(c), HeadSeeds: c.Int("head-seeds"),
			ReleaseWeights: true, // the command needs m's names and shapes only after compiling
			// The sums wait between batches beside the score file: a folder the
			// scores must fit in anyway, on a disk (the system's temporary folder is
			// often a RAM file system, where they would still take memory).
			SpillDir: filepath.Dir(c.String("out"))},
		Top: c.Float64("top"), Out: c.String("out"), Plot: c.String("plot"), Data: c.String("data")}
	r, _, err := scoreSensitivity(ctx, c.App.ErrWriter, cs.engine(w), m, v, split, pre, a)
	if err != nil && ctx.Err() != nil {
		return nil, cli.Exit(errors.New("interrupted; nothing written"), 130)
	}
	return r, err
}

// sensitivityArgs are the sensitivity stage's settings.
type sensitivityArgs struct {
	Opt       sensitivity.Options
	Top       float64 // share of entries the summary counts as sensitive
	Out, Plot string  // score file to write; plot to draw ("": none)
	Data      string  // the data folder, for the plot's title
}

// scoreSensitivity is the sensitivity stage: it scores m (left unchanged) on split,
// writes the score file and the plot, and returns the report and the scores.
func scoreSensitivity(ctx context.Context, log io.Writer, e engine.Engine, m *onnxpb.ModelProto, v *surgery.ViT, split *data.Split, pre meta.Preprocess, a sensitivityArgs) (*sensitivityReport, sensitivity.Scores, error) {
	bar := newProgress(log, "sensitivity")
	scores, info, err := sensitivity.Compute(ctx, e, m, split, pre, a.Opt, func(done, total int) {
		bar.update(done, total, "batches")
	})
	if err != nil {
		return nil, nil, err
	}
	sum, err := sensitivity.Summarize(v, scores, a.Top)
	if err != nil {
		return nil, nil, err
	}
	if err := sensitivity.Write(a.Out, m, scores, info); err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(log, "wrote %s (%d batches, %d images%s)\n", a.Out, info.Batches, info.Examples, headNote(info))
	if a.Plot != "" {
		title := fmt.Sprintf("sensitive weights of %s", a.Data)
		if err := writeVia(a.Plot, func(tmp string) error { return sum.Plot(tmp, title) }); err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(log, "wrote %s\n", a.Plot)
	}
	return &sensitivityReport{Out: a.Out, Info: info, Summary: sum, Seconds: bar.elapsed()}, scores, nil
}
