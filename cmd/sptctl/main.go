// Command sptctl fine-tunes vision transformers stored as ONNX files with
// Sensitivity-aware visual Parameter-efficient Tuning (SPT) and exports models that
// ONNX Runtime serves.
//
// Run `sptctl help` for the commands, `sptctl COMMAND --help` for each one's flags.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// usageError marks a mistake in how sptctl was called (exit code 2).
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func newApp() *cli.App {
	return &cli.App{
		Name:  "sptctl",
		Usage: "sensitivity-aware parameter-efficient tuning of ONNX vision transformers",
		Description: "sptctl scores which weights of a pretrained ViT matter for a new task, puts a\n" +
			"trainable-parameter budget there (LoRA or Adapter modules, sparse deltas), trains\n" +
			"them with libtorch and exports ONNX models that ONNX Runtime serves.\n\n" +
			"Progress goes to stderr; results to stdout (--json for scripts). Exit codes:\n" +
			"0 success, 1 failure, 2 bad usage, 130 interrupted.",
		HideHelpCommand:        false,
		UseShortOptionHandling: true,
		Commands:               commands(),
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
	}
}

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run runs sptctl with args, writing results to stdout and progress and errors to
// stderr, and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	app := newApp()
	app.Writer, app.ErrWriter = stdout, stderr
	err := app.Run(args)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "sptctl: %v\n", err)
	var u usageError
	if errors.As(err, &u) || strings.HasPrefix(err.Error(), "Required flag") {
		return 2
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}
