package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/engine/torch"
)

// The executor's settings on the commands that compute with it: --threads (train,
// sensitivity, tune, export's libtorch parity check) and --precision (train,
// sensitivity, tune).

func threadsFlag() cli.Flag {
	return &cli.IntFlag{Name: "threads", Usage: "CPU threads libtorch computes with (0: one per core)"}
}

func precisionFlag() cli.Flag {
	return &cli.StringFlag{Name: "precision", Value: "auto",
		Usage: "auto | bf16 | fp32: matrix products and convolutions in bfloat16 (mixed precision; weights, gradients and optimizer state stay fp32); auto: bf16 where the CPU has avx512_bf16 or amx_bf16"}
}

// computeSettings are the resolved --threads and --precision.
type computeSettings struct {
	Threads   int // 0: one per core
	Precision engine.PrecisionChoice
}

// computeFrom reads --threads and (withPrecision) --precision, resolving auto against
// the CPU's flags and saying what it chose on log.
func computeFrom(c *cli.Context, log io.Writer, withPrecision bool) (computeSettings, error) {
	return resolveCompute(c.Int("threads"), c.String("precision"), log, withPrecision)
}

func resolveCompute(threads int, precision string, log io.Writer, withPrecision bool) (computeSettings, error) {
	s := computeSettings{Threads: threads, Precision: engine.PrecisionChoice{Precision: engine.FP32}}
	if threads < 0 {
		return s, usagef("--threads %d: want 0 (one per core) or a positive count", threads)
	}
	if !withPrecision {
		return s, nil
	}
	pc, err := engine.ChoosePrecision(precision, engine.CPUInfo())
	if errors.Is(err, engine.ErrNoBF16) {
		return s, err // the flag is right, the machine cannot: bad input (exit 1)
	}
	if err != nil {
		return s, usageError{err}
	}
	s.Precision = pc
	fmt.Fprintf(log, "precision: %s\n", pc.Note)
	return s, nil
}

// worker starts the executor with the settings' thread count.
func (s computeSettings) worker() *torch.Worker { return torch.NewWorkerThreads(s.Threads) }

// engine is w compiling every Program at the settings' precision.
func (s computeSettings) engine(w *torch.Worker) engine.Engine {
	return engine.WithPrecision(w, s.Precision.Precision)
}
