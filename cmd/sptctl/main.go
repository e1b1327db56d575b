// Command sptctl fine-tunes vision transformers stored as ONNX files with
// Sensitivity-aware visual Parameter-efficient Tuning (SPT) and exports models that
// ONNX Runtime serves.
//
// Run `sptctl help` for the commands, `sptctl COMMAND --help` for each one's flags.
package main

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/export/ort"
)

func newApp() *cli.App {
	return &cli.App{
		Name:  "sptctl",
		Usage: "sensitivity-aware parameter-efficient tuning of ONNX vision transformers",
		Description: "sptctl scores which weights of a pretrained ViT matter for a new task, puts a\n" +
			"trainable-parameter budget there (LoRA, Adapter or DoRA modules, sparse deltas), trains\n" +
			"them with libtorch and exports ONNX models that ONNX Runtime serves.\n\n" +
			"Progress goes to stderr; results to stdout (--json for scripts). Flags may come\n" +
			"before or after arguments; after \"--\" everything is an argument. Exit codes,\n" +
			"the same for every command: 0 success, 1 bad input or failed check, 2 bad usage\n" +
			"(unknown command or flag, bad flag value), 130 interrupted.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "verbose", Usage: "also show ONNX Runtime's own log (warnings and errors)"},
		},
		Before: func(c *cli.Context) error {
			ort.SetVerbose(c.Bool("verbose"))
			return nil
		},
		HideHelpCommand:        false,
		UseShortOptionHandling: true,
		Commands:               commands(),
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		// Errors come back from Run: run prints them and chooses the exit code (the
		// default handler would exit the process itself).
		ExitErrHandler: func(*cli.Context, error) {},
	}
}

func main() {
	passiveOpenMP()
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// passiveOpenMP restarts sptctl with OMP_WAIT_POLICY=PASSIVE unless the variable is
// set. libtorch's OpenMP threads otherwise spin while they wait; with other processes
// on the cores that slowed training ten-fold here (bench/RESULTS.md), while on an idle
// machine passive waiting costs nothing measurable (bench/RESULTS-engine.md). OpenMP
// reads the variable when the library loads, before main, hence the restart.
func passiveOpenMP() {
	if _, set := os.LookupEnv("OMP_WAIT_POLICY"); set {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	env := append(os.Environ(), "OMP_WAIT_POLICY=PASSIVE")
	_ = syscall.Exec(exe, os.Args, env) // returns only on failure: then run as we are
}

// run runs sptctl with args, writing results to stdout and progress and errors to
// stderr, and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	app := newApp()
	app.Writer, app.ErrWriter = stdout, stderr
	args, err := reorderArgs(app, args)
	if err == nil {
		err = app.Run(args)
	}
	if err == nil {
		return exitOK
	}
	removeCreatedDirs(app)
	fmt.Fprintf(stderr, "sptctl: %v\n", oneLine(err))
	return exitCode(err)
}
