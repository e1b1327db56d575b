package engine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Precision is the arithmetic the executor runs matrix products and convolutions in.
//
// With BF16 the graph runs under libtorch's CPU autocast to bfloat16 (what
// torch.autocast("cpu", dtype=torch.bfloat16) does): MatMul, Gemm, the fused linear
// layers and Conv take bfloat16 copies of their inputs and weights and run on
// oneDNN's bfloat16 kernels; the weights, their gradients and the optimizer's state
// stay float32 (the casts are recorded for autograd, so a weight's gradient comes back
// in float32), and so do the graph's outputs, the loss and anything computed from the
// gradients (the sensitivity scores too). Layer norm and softmax take float32 inputs.
type Precision int

const (
	// FP32 runs everything in float32.
	FP32 Precision = iota
	// BF16 runs matrix products and convolutions in bfloat16 (mixed precision).
	BF16
)

func (p Precision) String() string {
	if p == BF16 {
		return "bf16"
	}
	return "fp32"
}

// PrecisionChoice is what ChoosePrecision decided and why.
type PrecisionChoice struct {
	Precision Precision
	// Note says why, for the user: the CPU's support, or the fall-back from auto.
	Note string
}

// ErrNoBF16 is returned by ChoosePrecision for "bf16" on a CPU without bfloat16
// arithmetic.
var ErrNoBF16 = errors.New("this CPU has no bfloat16 arithmetic (neither avx512_bf16 nor amx_bf16 in its flags)")

// ChoosePrecision resolves a --precision value: "fp32", "bf16" (an error wrapping
// ErrNoBF16 where the CPU cannot do it) or "auto" (bf16 where the CPU supports it,
// else fp32, saying so). cpuinfo is the text of /proc/cpuinfo (see CPUInfo).
func ChoosePrecision(flag string, cpuinfo []byte) (PrecisionChoice, error) {
	has, flagName := cpuHasBF16(cpuinfo)
	switch flag {
	case "fp32":
		return PrecisionChoice{FP32, "fp32 (asked)"}, nil
	case "bf16":
		if !has {
			return PrecisionChoice{}, fmt.Errorf("--precision bf16: %w; use --precision fp32 or auto", ErrNoBF16)
		}
		return PrecisionChoice{BF16, "bf16 (asked; CPU has " + flagName + ")"}, nil
	case "auto", "":
		if !has {
			return PrecisionChoice{FP32, "fp32 (auto: the CPU has neither avx512_bf16 nor amx_bf16)"}, nil
		}
		return PrecisionChoice{BF16, "bf16 (auto: CPU has " + flagName + ")"}, nil
	}
	return PrecisionChoice{}, fmt.Errorf("--precision %q: want auto, bf16 or fp32", flag)
}

// CPUInfo returns the text of /proc/cpuinfo, or of the file SPTCTL_CPUINFO names (for
// tests that need a CPU without bfloat16); nil if it cannot be read (then auto means
// fp32).
func CPUInfo() []byte {
	path := "/proc/cpuinfo"
	if p := os.Getenv("SPTCTL_CPUINFO"); p != "" {
		path = p
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return b
}

// cpuHasBF16 reports whether the first processor's flags include bfloat16 arithmetic
// that libtorch's oneDNN kernels use (avx512_bf16 or amx_bf16), and the flag found.
func cpuHasBF16(cpuinfo []byte) (bool, string) {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		found := ""
		for _, f := range strings.Fields(val) {
			if f == "amx_bf16" || f == "avx512_bf16" && found == "" {
				found = f
			}
		}
		return found != "", found
	}
	return false, ""
}

// WithPrecision returns e compiling every Program at precision p (where the caller's
// Options do not ask for bf16 already).
func WithPrecision(e Engine, p Precision) Engine { return precisionEngine{e, p} }

type precisionEngine struct {
	Engine
	p Precision
}

func (e precisionEngine) Compile(m *onnxpb.ModelProto, opt Options) (Program, error) {
	if opt.Precision == FP32 {
		opt.Precision = e.p
	}
	return e.Engine.Compile(m, opt)
}
