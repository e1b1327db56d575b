package main

// Every command checks its flags and its outputs before any work: a bad flag value is
// a usage error (exit 2), an output that would overwrite an input is refused (exit 1),
// and missing output folders are created, all before a model is loaded.

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
)

// Limits on sizes given by flags: far above any real use, low enough that nothing is
// allocated from a typo.
const (
	maxClasses   = 100_000
	maxRank      = 4096
	maxBatchSize = 4096
	maxBatches   = 1 << 20
	maxEpochs    = 1_000_000
	maxSamples   = 4096
)

// intIn checks that flag name is within [lo, hi]; zeroOK also allows 0 ("default").
func intIn(c *cli.Context, name string, lo, hi int64, zeroOK bool) error {
	v := c.Int64(name)
	if zeroOK && v == 0 {
		return nil
	}
	if v < lo || v > hi {
		return usagef("--%s %d: want %d to %d", name, v, lo, hi)
	}
	return nil
}

// floatIn checks that flag name is finite and within its range: above lo (or at least
// lo if loOK), below hi (or at most hi if hiOK).
func floatIn(c *cli.Context, name string, lo float64, loOK bool, hi float64, hiOK bool) error {
	v := c.Float64(name)
	ok := !math.IsNaN(v) && !math.IsInf(v, 0) && (v > lo || loOK && v == lo) && (v < hi || hiOK && v == hi)
	if ok {
		return nil
	}
	lb, rb := "(", ")"
	if loOK {
		lb = "["
	}
	if hiOK {
		rb = "]"
	}
	r := fmt.Sprintf("%s%g, %g%s", lb, lo, hi, rb)
	if math.IsInf(hi, 1) {
		r = fmt.Sprintf("a finite number > %g", lo)
		if loOK {
			r = fmt.Sprintf("a finite number ≥ %g", lo)
		}
	}
	return usagef("--%s %g: want %s", name, v, r)
}

// oneOf checks that flag name is one of values.
func oneOf(c *cli.Context, name string, values ...string) error {
	if v := c.String(name); !slices.Contains(values, v) {
		return usagef("--%s %q: want one of %s", name, v, strings.Join(values, ", "))
	}
	return nil
}

// firstErr is the first non-nil error.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// moduleTypeNames are the registered module tuners (allocate --type).
func moduleTypeNames() []string {
	var s []string
	for _, t := range inject.ModuleTypes() {
		s = append(s, string(t))
	}
	return s
}

func strategies() []string {
	var s []string
	for _, x := range inject.Strategies() {
		s = append(s, string(x))
	}
	return s
}

// checkBudgetSyntax checks the form of a --budget (its size against the model comes
// later, when the model is loaded).
func checkBudgetSyntax(c *cli.Context) error {
	if _, err := inject.ParseBudget(c.String("budget"), math.MaxInt64/4); err != nil {
		return usagef("--budget: %v", err)
	}
	return nil
}

// plotExts are the image formats a sensitivity plot can be written in.
var plotExts = []string{".png", ".svg", ".pdf", ".jpg", ".jpeg", ".eps", ".tif", ".tiff"}

func checkPlot(c *cli.Context) error {
	if p := c.String("plot"); p != "" && !hasExt(p, plotExts...) {
		return usagef("--plot %s: want a file ending in one of %s", p, strings.Join(plotExts, " "))
	}
	return nil
}

// modelOut are the files a model written to path may occupy (the model, and its side
// file when it passes the protobuf size limit).
func modelOut(flag, path string) []pathArg {
	if path == "" {
		return nil
	}
	return []pathArg{{flag, path}, {flag + " (its data file)", path + ".data"}}
}

func checkSensitivity(c *cli.Context) error {
	if err := firstErr(
		intIn(c, "batches", 1, maxBatches, false),
		intIn(c, "batch-size", 1, maxBatchSize, false),
		intIn(c, "classes", 1, maxClasses, true),
		floatIn(c, "top", 0, false, 1, true),
		checkPlot(c),
		checkHead(c),
	); err != nil {
		return err
	}
	return guardOutputs(c, append(modelInputs("--model", c.String("model")), pathArg{"--data", c.String("data")}),
		[]pathArg{{"--out", c.String("out")}, {"--plot", c.String("plot")}})
}

func checkAllocate(c *cli.Context) error {
	if err := firstErr(
		oneOf(c, "type", moduleTypeNames()...),
		oneOf(c, "strategy", strategies()...),
		intIn(c, "rank", 1, maxRank, false),
		intIn(c, "classes", 1, maxClasses, true),
		floatIn(c, "alpha", 0, false, math.Inf(1), false),
		floatIn(c, "beta", 0, false, math.Inf(1), false),
		checkBudgetSyntax(c),
	); err != nil {
		return err
	}
	return guardOutputs(c, append(modelInputs("--model", c.String("model")), pathArg{"--scores", c.String("scores")}),
		[]pathArg{{"--out", c.String("out")}})
}

func checkInject(c *cli.Context) error {
	if err := firstErr(
		intIn(c, "classes", 1, maxClasses, true),
		floatIn(c, "dropout", 0, true, 1, false),
	); err != nil {
		return err
	}
	return guardOutputs(c, append(modelInputs("--model", c.String("model")), pathArg{"--plan", c.String("plan")}),
		modelOut("--out", c.String("out")))
}

// trainCheckpoint is the checkpoint file train writes (--checkpoint, or OUT.ckpt).
func trainCheckpoint(c *cli.Context) string {
	if p := c.String("checkpoint"); p != "" {
		return p
	}
	return c.String("out") + ".ckpt"
}

func checkTrain(c *cli.Context) error {
	if err := firstErr(
		intIn(c, "epochs", 1, maxEpochs, false),
		intIn(c, "batch-size", 1, maxBatchSize, false),
		floatIn(c, "lr", 0, false, math.Inf(1), false),
		floatIn(c, "min-lr", 0, true, math.Inf(1), false),
		floatIn(c, "weight-decay", 0, true, math.Inf(1), false),
		intIn(c, "warmup", 0, maxEpochs, false),
		intIn(c, "val-every", 0, maxEpochs, false),
	); err != nil {
		return err
	}
	if c.String("train-split") == "" {
		return usagef("--train-split: want a split name")
	}
	return guardOutputs(c, append(modelInputs("--model", c.String("model")), pathArg{"--data", c.String("data")}),
		append(modelOut("--out", c.String("out")), pathArg{"--checkpoint", trainCheckpoint(c)}))
}

func checkEval(c *cli.Context) error {
	return intIn(c, "batch-size", 1, maxBatchSize, false)
}

func checkRun(c *cli.Context) error {
	return guardOutputs(c, append(modelInputs("--model", c.String("model")), pathArg{"--input", c.String("input")}, pathArg{"--adapter", c.String("adapter")}),
		[]pathArg{{"--output", c.String("output")}})
}

func checkFewShot(c *cli.Context) error {
	if err := firstErr(
		oneOf(c, "task", "classes", "rotation"),
		intIn(c, "train", 1, 1<<24, false),
		intIn(c, "val", 0, 1<<24, false),
		intIn(c, "test", 0, 1<<24, false),
	); err != nil {
		return err
	}
	out, from := c.String("out"), c.String("from")
	if samePath(out, from) {
		return fmt.Errorf("--out %s is the same folder as --from %s: refusing to write into an input; choose another output folder", out, from)
	}
	return prepareDir(c, pathArg{"--out", out}, filepath.Dir(filepath.Clean(out)))
}

// exportInputs are the model files an export reads: those on the command line, and
// the base model --model records when no --base is given.
func exportInputs(c *cli.Context) []pathArg {
	ins := append(modelInputs("--model", c.String("model")), modelInputs("--base", c.String("base"))...)
	if c.String("base") == "" {
		if md, err := onnxio.PeekMetadata(c.String("model")); err == nil && md[meta.KeyBasePath] != "" {
			p := md[meta.KeyBasePath]
			if !filepath.IsAbs(p) {
				p = filepath.Join(filepath.Dir(c.String("model")), p)
			}
			ins = append(ins, modelInputs("the base model", p)...)
		}
	}
	for _, s := range c.StringSlice("add-task") {
		if _, p, ok := strings.Cut(s, "="); ok {
			ins = append(ins, modelInputs("--add-task", p)...)
		}
	}
	return ins
}

// checkExport checks what every export mode writes; runExport checks the
// combinations of modes first.
func checkExport(c *cli.Context) error {
	if err := intIn(c, "samples", 1, maxSamples, false); err != nil {
		return err
	}
	ins := exportInputs(c)
	switch {
	case c.String("adapters") != "":
		dir := c.String("adapters")
		outs := []pathArg{{"--adapters", filepath.Join(dir, ReadyFile)}, {"--adapters", filepath.Join(dir, ManifestFile)}}
		return guardOutputDir(c, ins, pathArg{"--adapters", dir}, outs...)
	case c.String("sidecar") != "":
		dir, task := c.String("sidecar"), c.String("task")
		if err := export.CheckTaskName(task); err != nil {
			return usagef("export: --task: %v", err)
		}
		outs := []pathArg{{"--sidecar", filepath.Join(dir, task+".onnx")}, {"--sidecar", filepath.Join(dir, task+".data")}}
		return guardOutputDir(c, ins, pathArg{"--sidecar", dir}, outs...)
	default:
		return guardOutputs(c, ins, modelOut("--out", c.String("out")))
	}
}

// tuneFiles are the files tune writes into its --out folder.
func tuneFiles(c *cli.Context, task string) []pathArg {
	dir := c.String("out")
	var outs []pathArg
	for _, f := range []string{"scores.safetensors", "sensitivity.png", "plan.json", "tunable.onnx", "trained.onnx", "trained.onnx.ckpt",
		"merged.onnx", "report.json", "report.md"} {
		outs = append(outs, pathArg{"--out", filepath.Join(dir, f)})
	}
	for _, f := range []string{task + ".onnx", task + ".data", export.BaseData} {
		outs = append(outs, pathArg{"--out", filepath.Join(dir, "sidecar", f)})
	}
	return outs
}

// checkTune checks every flag of tune before the first stage runs, as each stage's
// command would.
func checkTune(c *cli.Context, task string) error {
	if err := firstErr(
		oneOf(c, "type", moduleTypeNames()...),
		oneOf(c, "strategy", strategies()...),
		intIn(c, "rank", 1, maxRank, false),
		intIn(c, "sens-batches", 1, maxBatches, false),
		intIn(c, "sens-batch-size", 1, maxBatchSize, false),
		checkHead(c),
		intIn(c, "epochs", 1, maxEpochs, false),
		intIn(c, "batch-size", 1, maxBatchSize, false),
		floatIn(c, "lr", 0, false, math.Inf(1), false),
		floatIn(c, "weight-decay", 0, true, math.Inf(1), false),
		intIn(c, "warmup", 0, maxEpochs, false),
		floatIn(c, "dropout", 0, true, 1, false),
		checkBudgetSyntax(c),
	); err != nil {
		return err
	}
	if err := export.CheckTaskName(task); err != nil {
		return usagef("tune: task name %q (from --task or the data folder's name): %v", task, err)
	}
	for _, s := range []string{"train-split", "test-split"} {
		if c.String(s) == "" {
			return usagef("--%s: want a split name", s)
		}
	}
	ins := append(modelInputs("--model", c.String("model")), pathArg{"--data", c.String("data")})
	return guardOutputDir(c, ins, pathArg{"--out", c.String("out")}, tuneFiles(c, task)...)
}

// Limits on a model's declared image input: far above any ViT's, low enough that a
// batch of images is never allocated from a bad declaration.
const (
	maxImageChannels = 64
	maxImageSide     = 16384
	maxImageValues   = 1 << 26 // C×H×W of one image: 256 MiB of float32
)

// checkImageSize refuses a declared image input too large to preprocess.
func checkImageSize(c, h, w int64) error {
	if c < 1 || h < 1 || w < 1 || c > maxImageChannels || h > maxImageSide || w > maxImageSide || c*h*w > maxImageValues {
		return fmt.Errorf("declared image input %d×%d×%d is outside sptctl's limits (at most %d channels, %d pixels a side, %d values an image)",
			c, h, w, maxImageChannels, maxImageSide, maxImageValues)
	}
	return nil
}
