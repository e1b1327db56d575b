package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/onnxio"
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
			"Each stage is the sptctl command of the same name; their flags are repeated here.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "base model (ONNX)", Required: true},
			&cli.StringFlag{Name: "data", Usage: "task data folder", Required: true},
			&cli.StringFlag{Name: "out", Usage: "output folder", Required: true},
			&cli.StringFlag{Name: "task", Usage: "task name for the sidecar (default: the data folder's name)"},
			&cli.StringFlag{Name: "budget", Value: "0.4M", Usage: "trainable parameters (spt)"},
			&cli.StringFlag{Name: "type", Value: "lora", Usage: "lora | adapter"},
			&cli.StringFlag{Name: "strategy", Value: "spt", Usage: "spt | lora-qv | uniform | bitfit | linear | full"},
			&cli.IntFlag{Name: "rank", Value: 8},
			&cli.IntFlag{Name: "sens-batches", Value: 16, Usage: "sensitivity batches"},
			&cli.IntFlag{Name: "sens-batch-size", Value: 32, Usage: "sensitivity batch size"},
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
}

type stageTime struct {
	Stage   string  `json:"stage"`
	Seconds float64 `json:"seconds"`
}

func runTune(c *cli.Context) error {
	dir := c.String("out")
	file := func(name string) string { return filepath.Join(dir, name) }
	task := c.String("task")
	if task == "" {
		task = strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
				return r
			}
			return '_'
		}, filepath.Base(filepath.Clean(c.String("data"))))
	}
	if err := checkTune(c, task); err != nil {
		return err
	}
	model, dataDir, seed := c.String("model"), c.String("data"), fmt.Sprint(c.Int64("seed"))
	r := &tuneReport{Model: model, Data: dataDir, Out: dir, Strategy: c.String("strategy"), Type: c.String("type"),
		Files: map[string]string{}}
	log := c.App.ErrWriter
	// stage runs one sptctl verb in-process, its JSON result captured when asked for.
	stage := func(name string, args ...string) ([]byte, error) {
		fmt.Fprintf(log, "\n== %s\n", name)
		var out bytes.Buffer
		app := newApp()
		app.Writer, app.ErrWriter = io.Writer(&out), log
		start := time.Now()
		err := app.Run(append([]string{"sptctl"}, args...))
		r.Stages = append(r.Stages, stageTime{name, time.Since(start).Seconds()})
		if err != nil {
			return nil, fmt.Errorf("tune: %s: %w", name, err)
		}
		return out.Bytes(), nil
	}
	decode := func(b []byte, v any) error {
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("tune: reading a stage's result: %w", err)
		}
		return nil
	}
	ins, err := stage("inspect", "inspect", "--json", model)
	if err != nil {
		return err
	}
	var insp inspectReport
	if err := decode(ins, &insp); err != nil {
		return err
	}
	r.Backbone = insp.Backbone

	allocArgs := []string{"allocate", "--model", model, "--out", file("plan.json"), "--json",
		"--type", c.String("type"), "--rank", fmt.Sprint(c.Int("rank")), "--strategy", c.String("strategy")}
	if c.String("strategy") == "spt" {
		if _, err := stage("sensitivity", "sensitivity", "--model", model, "--data", dataDir, "--split", c.String("train-split"),
			"--batches", fmt.Sprint(c.Int("sens-batches")), "--batch-size", fmt.Sprint(c.Int("sens-batch-size")),
			"--seed", seed, "--head-seed", seed, "--out", file("scores.safetensors"), "--plot", file("sensitivity.png"), "--json"); err != nil {
			return err
		}
		r.Files["scores"], r.Files["sensitivity_plot"] = file("scores.safetensors"), file("sensitivity.png")
		allocArgs = append(allocArgs, "--scores", file("scores.safetensors"), "--budget", c.String("budget"))
	} else {
		classes, err := dataClasses(dataDir)
		if err != nil {
			return err
		}
		allocArgs = append(allocArgs, "--classes", fmt.Sprint(classes))
	}
	plan, err := stage("allocate", allocArgs...)
	if err != nil {
		return err
	}
	r.Plan = plan
	var sum struct{ Trainable int64 }
	if err := decode(plan, &sum); err != nil {
		return err
	}
	r.Trainable = sum.Trainable
	if p, err := inject.LoadPlan(file("plan.json")); err == nil {
		var tb strings.Builder
		printPlan(&tb, p)
		r.Allocation = tb.String()
	}
	r.Share = float64(sum.Trainable) / float64(max(r.Backbone, 1))
	if _, err := stage("inject", "inject", "--model", model, "--plan", file("plan.json"), "--out", file("tunable.onnx"),
		"--dropout", fmt.Sprint(c.Float64("dropout")), "--seed", seed); err != nil {
		return err
	}
	evalTop1 := func(name, path string) (float64, int, error) {
		b, err := stage(name, "eval", "--model", path, "--data", dataDir, "--split", c.String("test-split"), "--json")
		if err != nil {
			return 0, 0, err
		}
		var e struct {
			Top1 float64
			N    int
		}
		return e.Top1, e.N, decode(b, &e)
	}
	if r.Before, _, err = evalTop1("eval untrained", file("tunable.onnx")); err != nil {
		return err
	}
	trainArgs := []string{"train", "--model", file("tunable.onnx"), "--data", dataDir, "--out", file("trained.onnx"), "--json",
		"--train-split", c.String("train-split"), "--val-split", c.String("val-split"),
		"--epochs", fmt.Sprint(c.Int("epochs")), "--batch-size", fmt.Sprint(c.Int("batch-size")), "--lr", fmt.Sprint(c.Float64("lr")),
		"--weight-decay", fmt.Sprint(c.Float64("weight-decay")), "--warmup", fmt.Sprint(c.Int("warmup")), "--seed", seed}
	if tr, err := stage("train", trainArgs...); err != nil {
		return err
	} else {
		r.Train = tr
	}
	if r.After, r.TestN, err = evalTop1("eval trained", file("trained.onnx")); err != nil {
		return err
	}
	if _, err := stage("export merged", "export", "--model", file("trained.onnx"), "--merge", "--out", file("merged.onnx"), "--json"); err != nil {
		return err
	}
	if _, err := stage("export sidecar", "export", "--model", file("trained.onnx"), "--sidecar", file("sidecar"), "--task", task, "--json"); err != nil {
		return err
	}
	sidecar := filepath.Join(dir, "sidecar", task+".onnx")
	if r.Merged, _, err = evalTop1("eval merged", file("merged.onnx")); err != nil {
		return err
	}
	if r.Sidecar, _, err = evalTop1("eval sidecar", sidecar); err != nil {
		return err
	}
	for k, v := range map[string]string{"plan": "plan.json", "tunable": "tunable.onnx", "trained": "trained.onnx", "merged": "merged.onnx", "report": "report.json"} {
		r.Files[k] = file(v)
	}
	r.Files["sidecar"] = sidecar
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFile(file("report.json"), append(b, '\n')); err != nil {
		return err
	}
	if err := writeFile(file("report.md"), []byte(r.markdown())); err != nil {
		return err
	}
	if c.Bool("json") {
		_, err := c.App.Writer.Write(append(b, '\n'))
		return err
	}
	fmt.Fprint(c.App.Writer, r.markdown())
	return nil
}

func writeFile(path string, b []byte) error {
	return onnxio.WriteFileAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err })
}

// dataClasses is the class count of a data folder.
func dataClasses(dir string) (int, error) {
	ds, _, err := openSplit(dir, "train", 0)
	if err != nil {
		return 0, err
	}
	return ds.NumClasses(), nil
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
	fmt.Fprintf(&b, "| sidecar model, ONNX Runtime | %.2f%% |\n\n", 100*r.Sidecar)
	if r.Allocation != "" {
		fmt.Fprintf(&b, "where the trainable parameters went:\n\n```\n%s```\n\n", r.Allocation)
	}
	fmt.Fprintf(&b, "| stage | seconds |\n|---|---:|\n")
	for _, s := range r.Stages {
		fmt.Fprintf(&b, "| %s | %.1f |\n", s.Stage, s.Seconds)
	}
	fmt.Fprintf(&b, "\nfiles:\n")
	for _, k := range []string{"merged", "sidecar", "trained", "plan", "sensitivity_plot", "report"} {
		if f, ok := r.Files[k]; ok {
			fmt.Fprintf(&b, "- %s: %s\n", k, f)
		}
	}
	return b.String()
}
