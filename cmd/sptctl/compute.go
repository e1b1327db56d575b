package main

import (
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/export/ort"
)

// The settings of the commands that compute: --threads on every one that runs libtorch
// or ONNX Runtime (train, sensitivity, tune, export, eval, run) and --precision on those
// that train (train, sensitivity, tune).

// maxThreads bounds --threads (a typo such as 80000 would start that many threads).
const maxThreads = 1024

// threadsFlag is --threads; what says which runtime(s) the command computes with. Its
// default is the number of cores this process may run on (runtime.NumCPU follows the
// CPU affinity mask, so `taskset -c 0` gives 1).
func threadsFlag(what string) cli.Flag {
	return &cli.IntFlag{Name: "threads", Value: runtime.NumCPU(),
		Usage: "CPU threads for " + what + "; the default is the number of cores this process may run on"}
}

const (
	libtorchThreads = "libtorch"
	ortThreads      = "ONNX Runtime (intra-op; inter-op is 1)"
	bothThreads     = "libtorch and ONNX Runtime (intra-op; inter-op is 1)"
)

func precisionFlag() cli.Flag {
	return &cli.StringFlag{Name: "precision", Value: "auto",
		Usage: "auto | bf16 | fp32: matrix products and convolutions in bfloat16 (mixed precision; weights, gradients and optimizer state stay fp32); auto: bf16 where the CPU has avx512_bf16 or amx_bf16"}
}

// computeSettings are the resolved --threads and --precision.
type computeSettings struct {
	Threads   int // at least 1
	Precision engine.PrecisionChoice
}

// computeFrom reads --threads and (withPrecision) --precision, resolving auto against
// the CPU's flags and saying what it chose on log.
func computeFrom(c *cli.Context, log io.Writer, withPrecision bool) (computeSettings, error) {
	return resolveCompute(c.Int("threads"), c.String("precision"), log, withPrecision)
}

func resolveCompute(threads int, precision string, log io.Writer, withPrecision bool) (computeSettings, error) {
	s := computeSettings{Threads: threads, Precision: engine.PrecisionChoice{Precision: engine.FP32}}
	if threads < 1 || threads > maxThreads {
		return s, usagef("--threads %d: want 1 to %d (default %d, the cores this process may run on)", threads, maxThreads, runtime.NumCPU())
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

// threadsFrom reads and checks --threads alone (the commands without --precision).
func threadsFrom(c *cli.Context) (computeSettings, error) {
	return computeFrom(c, io.Discard, false)
}

// ort is the ONNX Runtime session option for the settings' thread count.
func (s computeSettings) ort() ort.Option { return ort.Threads(s.Threads) }

// worker starts the executor with the settings' thread count.
func (s computeSettings) worker() *torch.Worker { return torch.NewWorkerThreads(s.Threads) }

// engine is w compiling every Program at the settings' precision.
func (s computeSettings) engine(w *torch.Worker) engine.Engine {
	return engine.WithPrecision(w, s.Precision.Precision)
}
