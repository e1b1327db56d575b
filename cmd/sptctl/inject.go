package main

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

func injectCommand() *cli.Command {
	return &cli.Command{
		Name:  "inject",
		Usage: "rewrite a model's graph with the trainable modules of a plan",
		Description: "inject adds LoRA branches (in parallel with their layer), Adapters (in sequence\n" +
			"on its output), sparse deltas (W + ScatterND(values)) and a new head for the task's\n" +
			"classes, and records what is trainable in the model's metadata. Until training\n" +
			"moves them, the injected modules change nothing: the model computes the base's\n" +
			"function (with --keep-head, its very outputs).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "base model (ONNX)", Required: true},
			&cli.StringFlag{Name: "plan", Usage: "plan from `sptctl allocate`", Required: true},
			&cli.IntFlag{Name: "classes", Usage: "task classes (must match the plan; default: the plan's)"},
			&cli.BoolFlag{Name: "keep-head", Usage: "keep the model's own head instead of a new one"},
			&cli.Float64Flag{Name: "dropout", Usage: "dropout ratio on the input of LoRA and Adapter branches (training only; DoRA has none)", Value: 0.1},
			&cli.Int64Flag{Name: "seed", Usage: "seed of the structured modules' initialisation (LoRA and DoRA A, Adapter down)"},
			&cli.StringFlag{Name: "out", Usage: "injected model to write", Value: "tunable.onnx"},
		},
		Action: func(c *cli.Context) error {
			if err := checkInject(c); err != nil {
				return err
			}
			m, err := onnxio.Load(c.String("model"))
			if err != nil {
				return err
			}
			p, err := inject.LoadPlan(c.String("plan"))
			if err != nil {
				return err
			}
			base, err := filepath.Abs(c.String("model"))
			if err != nil {
				return err
			}
			opt := inject.ApplyOptions{Classes: c.Int("classes"), KeepHead: c.Bool("keep-head"), Seed: c.Int64("seed"),
				Dropout: float32(c.Float64("dropout")), BasePath: base}
			tunable, n, err := injectPlan(m, c.String("model"), p, c.String("plan"), opt)
			if err != nil {
				return err
			}
			if err := onnxio.Save(c.String("out"), tunable); err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "wrote %s: %s trainable parameters\n", c.String("out"), commas(n))
			return nil
		},
	}
}

// injectPlan is the inject stage: the tunable model, base (from basePath) with plan p
// (from planPath) applied, and its trainable parameter count. base is not changed:
// the tunable model is a copy that shares base's unchanged tensors.
func injectPlan(base *onnxpb.ModelProto, basePath string, p *inject.Plan, planPath string, opt inject.ApplyOptions) (*onnxpb.ModelProto, int64, error) {
	fp, err := onnxio.Fingerprint(base.Graph)
	if err != nil {
		return nil, 0, err
	}
	if err := p.Check(fp); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", planPath, err)
	}
	m := surgery.ShallowCopy(base)
	if err := inject.Apply(m, p, opt); err != nil {
		return nil, 0, fmt.Errorf("inject %s: %w", basePath, err)
	}
	n, err := inject.TrainableCount(m)
	if err != nil {
		return nil, 0, err
	}
	return m, n, nil
}
