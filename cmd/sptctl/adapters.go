package main

// ONNX Runtime-native adapters: `sptctl export --adapters DIR` (adapterFlags,
// runAdapterExport) and `--adapter FILE` for eval and run (adapterFlag, withAdapter).
// See docs/adapters.md.

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/export/adapter"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// ReadyFile is the adapter-ready model's name in an --adapters folder; Manifest the
// folder's description.
const (
	ReadyFile    = "ready.onnx"
	ManifestFile = "adapters.json"
)

// adapterFlags are the flags `sptctl export` takes for --adapters (besides its own
// --model, --task, --base and --json, which runAdapterExport also reads).
func adapterFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "adapters", Usage: "`DIR` to write an adapter-ready model (ready.onnx) and one NAME.onnx_adapter per task to: --model (named by --task) and every --add-task"},
		&cli.StringSliceFlag{Name: "add-task", Usage: "`NAME=TRAINED` another task tuned from the same base (with --adapters; repeat)"},
	}
}

// adapterTask is one task of an --adapters export.
type adapterTask struct {
	Name    string  `json:"name"`
	Model   string  `json:"model"`   // the trained model it came from
	Adapter string  `json:"adapter"` // NAME.onnx_adapter, relative to DIR
	Classes int     `json:"classes"` // its logits are the first Classes outputs
	Rel     float64 `json:"parity_rel"`
	m       *onnxpb.ModelProto
}

// adapterManifest is DIR/adapters.json, and what `export --adapters --json` prints.
type adapterManifest struct {
	Model           string        `json:"model"` // ready.onnx
	Base            string        `json:"base"`
	BaseFingerprint string        `json:"base_fingerprint"`
	Classes         int           `json:"classes"`      // the ready head's outputs
	BaseClasses     int           `json:"base_classes"` // with no adapter: the base model's
	BaseRel         float64       `json:"base_parity_rel"`
	Inputs          int           `json:"adapter_inputs"`
	Tasks           []adapterTask `json:"tasks"`
}

var taskNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// adapterTasks are the tasks named on the command line.
func adapterTasks(c *cli.Context) ([]adapterTask, error) {
	var ts []adapterTask
	if m := c.String("model"); m != "" {
		name := c.String("task")
		if name == "" {
			name = strings.TrimSuffix(filepath.Base(m), filepath.Ext(m))
		}
		ts = append(ts, adapterTask{Name: name, Model: m})
	}
	for _, s := range c.StringSlice("add-task") {
		name, path, ok := strings.Cut(s, "=")
		if !ok || path == "" {
			return nil, usagef("export: --add-task %q: want NAME=TRAINED", s)
		}
		ts = append(ts, adapterTask{Name: name, Model: path})
	}
	seen := map[string]bool{}
	for _, t := range ts {
		if !taskNameRE.MatchString(t.Name) {
			return nil, usagef("export: task name %q: use letters, digits, '.', '_' and '-' (not first)", t.Name)
		}
		if seen[t.Name] {
			return nil, usagef("export: task name %q given twice", t.Name)
		}
		seen[t.Name] = true
	}
	if len(ts) == 0 {
		return nil, usagef("export: --adapters needs tasks: --model TRAINED [--task NAME] and/or --add-task NAME=TRAINED")
	}
	return ts, nil
}

// runAdapterExport is `sptctl export --adapters DIR`: it builds the adapter-ready
// model of the tasks, writes DIR/ready.onnx, DIR/NAME.onnx_adapter for each task
// (each checked with adapter.Check, written, read back and checked again) and
// DIR/adapters.json, after ONNX Runtime showed on random inputs that the ready model
// with each task's adapter (through ONNX Runtime's adapter API) reproduces the task
// model, and with none the base model, to 1e-5 (relative).
func runAdapterExport(c *cli.Context, cs computeSettings) error {
	dir := c.String("adapters")
	if dir == "" {
		return usagef("export: --adapters needs a DIR")
	}
	if err := checkExport(c); err != nil {
		return err
	}
	tasks, err := adapterTasks(c)
	if err != nil {
		return err
	}
	log := c.App.ErrWriter
	models := make([]*onnxpb.ModelProto, len(tasks))
	for i := range tasks {
		m, err := onnxio.Load(tasks[i].Model)
		if err != nil {
			return err
		}
		tasks[i].m, models[i] = m, m
	}
	basePath := c.String("base")
	if basePath == "" {
		p, _ := onnxio.Metadata(models[0], meta.KeyBasePath)
		if p == "" {
			return fmt.Errorf("%s records no base model path; give --base BASE (the model `sptctl inject` was run on)", tasks[0].Model)
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(tasks[0].Model), p)
		}
		basePath = p
		fmt.Fprintf(log, "base model: %s (recorded by inject)\n", p)
	}
	base, err := onnxio.Load(basePath)
	if err != nil {
		return err
	}
	ready, err := adapter.BuildReady(base, models)
	if err != nil {
		return err
	}
	info, err := adapter.Info(ready)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	readyPath := filepath.Join(dir, ReadyFile)
	if err := onnxio.Save(readyPath, ready); err != nil {
		return err
	}
	fmt.Fprintf(log, "wrote %s: %d adapter inputs, head of %d classes\n", readyPath, len(info.Inputs), info.Classes)
	man := &adapterManifest{Model: ReadyFile, Base: basePath, BaseFingerprint: info.BaseFingerprint, Classes: info.Classes, BaseClasses: info.BaseClasses, Inputs: len(info.Inputs)}

	s, err := ort.Open(readyPath, cs.ort())
	if err != nil {
		return err
	}
	defer s.Close()
	xs, err := randomInputs(s, 4)
	if err != nil {
		return fmt.Errorf("%s: %w", readyPath, err)
	}
	if man.BaseRel, err = adapterParity(basePath, s, nil, xs, info.BaseClasses, cs); err != nil {
		return fmt.Errorf("parity check: the adapter-ready model with no adapter vs the base model: %w", err)
	}
	fmt.Fprintf(log, "parity: %s with no adapter vs the base model: relative %.3g\n", ReadyFile, man.BaseRel)
	for i := range tasks {
		t := &tasks[i]
		ts, err := adapter.ForTask(ready, t.m)
		if err != nil {
			return fmt.Errorf("task %s: %w", t.Name, err)
		}
		if err := adapter.Check(ready, ts); err != nil {
			return fmt.Errorf("task %s: %w", t.Name, err)
		}
		t.Adapter = t.Name + adapter.Ext
		p := filepath.Join(dir, t.Adapter)
		if err := adapter.WriteFor(p, ts, info.BaseFingerprint); err != nil {
			return err
		}
		back, err := adapter.Read(p)
		if err == nil {
			err = adapter.Check(ready, back)
		}
		if err != nil {
			return fmt.Errorf("task %s: the adapter written does not read back: %w", t.Name, err)
		}
		t.Classes, _ = adapter.TaskClasses(ready, ts)
		a, err := ort.LoadLoraAdapter(p)
		if err != nil {
			return err
		}
		t.Rel, err = adapterParity(t.Model, s, a, xs, t.Classes, cs)
		a.Close()
		if err != nil {
			os.Remove(p)
			return fmt.Errorf("parity check: task %s: %w", t.Name, err)
		}
		fmt.Fprintf(log, "wrote %s: %d classes; parity with %s: relative %.3g\n", p, t.Classes, t.Model, t.Rel)
	}
	man.Tasks = tasks
	if err := writeManifest(filepath.Join(dir, ManifestFile), man); err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, man)
	}
	fmt.Fprintf(c.App.Writer, "adapter-ready model %s (%d adapter inputs, %d classes), %d tasks:\n", readyPath, man.Inputs, man.Classes, len(tasks))
	for _, t := range tasks {
		fmt.Fprintf(c.App.Writer, "  %-16s %s  %d classes\n", t.Name, filepath.Join(dir, t.Adapter), t.Classes)
	}
	fmt.Fprintf(c.App.Writer, "run a task: sptctl eval --model %s --adapter %s --data DATA\n", readyPath, filepath.Join(dir, tasks[0].Adapter))
	return nil
}

func writeManifest(path string, man *adapterManifest) error {
	return onnxio.WriteFileAtomic(path, func(w io.Writer) error { return writeJSON(w, man) })
}

// randomInputs are n seeded random batches of the session's one required input.
func randomInputs(s *ort.Session, n int) ([]map[string]ort.Tensor, error) {
	ins := s.Inputs()
	if len(ins) != 1 || ins[0].Type != "float32" || ins[0].Shape == nil {
		return nil, fmt.Errorf("want one float32 input of known rank, the model has %v", ins)
	}
	shape := append([]int64(nil), ins[0].Shape...)
	for i, d := range shape {
		if d < 0 {
			shape[i] = map[bool]int64{true: 2, false: 1}[i == 0]
		}
	}
	rng := rand.New(rand.NewPCG(0x5350, 0x41))
	var xs []map[string]ort.Tensor
	for k := 0; k < n; k++ {
		x := ort.Tensor{Shape: shape, Data: make([]float32, onnxio.NumElements(shape))}
		for i := range x.Data {
			x.Data[i] = float32(rng.NormFloat64())
		}
		xs = append(xs, map[string]ort.Tensor{ins[0].Name: x})
	}
	return xs, nil
}

// adapterParity runs the ready session (with adapter a, or none) and the model at
// oracle on xs and returns the relative difference of their first outputs (the
// ready model's logits cut to classes); it fails above 1e-5.
func adapterParity(oracle string, s *ort.Session, a *ort.LoraAdapter, xs []map[string]ort.Tensor, classes int, cs computeSettings) (float64, error) {
	o, err := ort.Open(oracle, cs.ort())
	if err != nil {
		return 0, err
	}
	defer o.Close()
	var num, den float64
	for _, x := range xs {
		want, err := o.Run(x)
		if err != nil {
			return 0, err
		}
		got, err := s.RunWithAdapters(x, adapters(a)...)
		if err != nil {
			return 0, err
		}
		w, g := want[o.Outputs()[0].Name], trimLogits(got[s.Outputs()[0].Name], classes)
		if fmt.Sprint(w.Shape) != fmt.Sprint(g.Shape) {
			return 0, fmt.Errorf("output shapes %v and %v differ", g.Shape, w.Shape)
		}
		for i := range w.Data {
			d := math.Abs(float64(g.Data[i]) - float64(w.Data[i]))
			if math.IsNaN(d) {
				d = math.Inf(1)
			}
			num, den = max(num, d), max(den, math.Abs(float64(w.Data[i])))
		}
	}
	rel := num
	if den > 0 {
		rel = num / den
	}
	if !(rel <= 1e-5) {
		return rel, fmt.Errorf("relative difference %.3g > 1e-5; nothing more written", rel)
	}
	return rel, nil
}

func adapters(a *ort.LoraAdapter) []*ort.LoraAdapter {
	if a == nil {
		return nil
	}
	return []*ort.LoraAdapter{a}
}

// trimLogits keeps the first classes columns of a [N, K] float output (K > classes);
// anything else is returned as it is.
func trimLogits(t ort.Tensor, classes int) ort.Tensor {
	if len(t.Shape) != 2 || t.Data == nil || classes <= 0 || int64(classes) >= t.Shape[1] {
		return t
	}
	k := int(t.Shape[1])
	rows := len(t.Data) / k
	out := ort.Tensor{Shape: []int64{t.Shape[0], int64(classes)}, Data: make([]float32, 0, rows*classes)}
	for r := 0; r < rows; r++ {
		out.Data = append(out.Data, t.Data[r*k:r*k+classes]...)
	}
	return out
}

// adapterFlag is --adapter FILE for `sptctl eval` and `sptctl run`.
func adapterFlag() cli.Flag {
	return &cli.StringFlag{Name: "adapter", Usage: "`TASK.onnx_adapter` to run the adapter-ready --model with (from `sptctl export --adapters`)"}
}

// withAdapter returns what eval and run call instead of s.Run, s being the session
// of modelPath. Without --adapter it is s.Run. With --adapter FILE it first checks
// FILE as sptctl reads it (format, then every tensor's name, shape and type against
// modelPath's adapter inputs: adapter.Check), so that a malformed or mismatched file
// gets a clear error before ONNX Runtime sees it; then loads it with ONNX Runtime's
// own loader (CreateLoraAdapter) and makes every run apply it
// (RunOptionsAddActiveLoraAdapter), returning the logits cut to the task's classes.
// Call done when finished.
func withAdapter(c *cli.Context, s *ort.Session, modelPath string) (run func(map[string]ort.Tensor) (map[string]ort.Tensor, error), done func(), err error) {
	path := c.String("adapter")
	if path == "" {
		return s.Run, func() {}, nil
	}
	a, classes, err := openAdapter(modelPath, path)
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(c.App.ErrWriter, "adapter: %s (%d classes)\n", path, classes)
	outs := s.Outputs()
	run = func(in map[string]ort.Tensor) (map[string]ort.Tensor, error) {
		y, err := s.RunWithAdapters(in, a)
		if err != nil {
			return nil, err
		}
		if len(outs) > 0 {
			if t, ok := y[outs[0].Name]; ok {
				y[outs[0].Name] = trimLogits(t, classes)
			}
		}
		return y, nil
	}
	return run, func() { a.Close() }, nil
}

// openAdapter checks the adapter at path against the model at modelPath and loads
// it with ONNX Runtime; classes is its task's class count (0 if unknown).
func openAdapter(modelPath, path string) (*ort.LoraAdapter, int, error) {
	f, err := adapter.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	tensors := f.Tensors
	m, err := onnxio.Load(modelPath)
	if err != nil {
		return nil, 0, err
	}
	if err := adapter.CheckBase(f, m); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	if err := adapter.Check(m, tensors); err != nil {
		var hint string
		if _, ierr := adapter.Info(m); ierr != nil {
			hint = " (" + ierr.Error() + ")"
		}
		return nil, 0, fmt.Errorf("%s: %w%s", path, err, hint)
	}
	classes, _ := adapter.TaskClasses(m, tensors)
	a, err := ort.LoadLoraAdapter(path)
	if err != nil {
		return nil, 0, err
	}
	return a, classes, nil
}
