// Command engine times sptctl's training executor (package engine/torch) on an ONNX
// model: Compile, then STEPS timed steps of train.Step (ZeroGrad + ForwardBackward: train-mode
// forward, mean cross-entropy, backward) on one fixed random batch, after WARMUP
// untimed steps. It prints one JSON line; /usr/bin/time -v around it gives peak RSS.
//
//	go build -o /tmp/engine ./bench/engine
//	/tmp/engine [-batch 64] [-steps 10] [-warmup 1] [-threads 2] [-trainable all|marked] [-adamw] [-precision fp32|bf16]
//	            [-cpuprofile F] [-torchprofile F] [-ab MODEL2] MODEL
//
// -trainable all: every float initializer gets requires_grad (full fine-tuning).
// -trainable marked: only the initializers `sptctl inject` marked trainable (what
// `sptctl train` trains). -adamw adds what train.Fit does after the backward: the
// AdamW update in Go (AdamW.Apply: Grad, Floats, Update, SetFloats per trainable) and a SetSeed.
// The model proto is released after Compile (the executor copies the weights into
// libtorch). The JSON has the peak RSS (VmHWM) after Compile and at the end.
// -cpuprofile writes Go's CPU profile of the timed steps; -torchprofile writes
// libtorch's per-operator self and total milliseconds, calls and input shapes over the
// timed steps, one tab-separated line per operator and shapes, by self time
// (torch.StartProfile): how to see which operators one plan's step spends more on than
// another's (diff two files by operator).
// -ab MODEL2 compiles both models on the one worker and alternates their steps (A B,
// B A, ...) so that both see the same machine: the JSON's "ab" has MODEL2's medians
// and the median of the per-pair ratios MODEL / MODEL2, in wall and CPU seconds (what
// bench/stepcost/run.sh compares plans with; the peak RSS is then both models').
// bench/engine/run.sh and bench/serve/run.sh run it beside PyTorch.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/osmem"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/train"
)

func main() {
	batch := flag.Int("batch", 64, "images per step")
	steps := flag.Int("steps", 10, "timed steps")
	warm := flag.Int("warmup", 1, "untimed steps first")
	threads := flag.Int("threads", 2, "libtorch intra-op threads")
	which := flag.String("trainable", "all", "all | marked")
	adamw := flag.Bool("adamw", false, "also do train.Fit's AdamW update after each backward")
	cpu := flag.String("cpuprofile", "", "write a CPU profile of the timed steps here")
	tprof := flag.String("torchprofile", "", "write libtorch's per-operator times of the timed steps here (tab-separated, by self time)")
	precision := flag.String("precision", "fp32", "fp32 | bf16 (matrix products and convolutions under bfloat16 autocast)")
	other := flag.String("ab", "", "a second model: compile both, alternate their steps in the same process and report both and the per-pair ratios (MODEL / this)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: engine [flags] MODEL")
		os.Exit(2)
	}
	if *steps < 1 || *warm < 0 || *batch < 1 {
		fmt.Fprintln(os.Stderr, "engine: -steps and -batch must be at least 1, -warmup at least 0")
		os.Exit(2)
	}
	pc, err := engine.ChoosePrecision(*precision, engine.CPUInfo())
	if err != nil {
		fmt.Fprintln(os.Stderr, "engine:", err)
		os.Exit(1)
	}
	if err := run(flag.Arg(0), *other, *batch, *steps, *warm, *threads, *which, *adamw, *cpu, *tprof, pc.Precision); err != nil {
		fmt.Fprintln(os.Stderr, "engine:", err)
		os.Exit(1)
	}
}

// model is one compiled model with its fixed batch and optimizer.
type model struct {
	path   string
	p      engine.Program
	nTrain int64
	imgs   []float32
	labels []int64
	opt    *train.AdamW
	loss   float64
}

// compile loads and compiles path on w, marking the trainable weights (which: all or
// marked), and makes its fixed random batch.
func compile(w *torch.Worker, path string, batch int, which string, prec engine.Precision) (*model, error) {
	m, err := onnxio.Load(path)
	if err != nil {
		return nil, err
	}
	var names []string
	if which == "marked" {
		if names, err = meta.Trainable(m); err != nil {
			return nil, err
		}
	} else { // every float initializer (what Program.Params lists)
		for _, t := range m.GetGraph().GetInitializer() {
			if t.GetDataType() == int32(onnxpb.TensorProto_FLOAT) {
				names = append(names, t.GetName())
			}
		}
	}
	md := &model{path: path, opt: train.NewAdamW(1e-4)}
	per := 1
	err = w.Do(func() error {
		var err error
		if md.p, err = w.Compile(m, engine.Options{Trainable: names, Precision: prec}); err != nil {
			return err
		}
		for _, n := range md.p.Trainable() {
			s, _ := md.p.ParamShape(n)
			c := int64(1)
			for _, d := range s {
				c *= d
			}
			md.nTrain += c
		}
		for _, d := range md.p.Inputs()[0].Shape[1:] {
			per *= int(d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rng := rand.New(rand.NewSource(1))
	md.imgs = make([]float32, batch*per)
	for k := range md.imgs {
		md.imgs[k] = float32(rng.NormFloat64())
	}
	md.labels = make([]int64, batch)
	for k := range md.labels {
		md.labels[k] = int64(k % 5)
	}
	return md, nil
}

// step runs one training step (and, with adamw, the update) and returns its wall and
// CPU seconds.
func (md *model) step(w *torch.Worker, batch int, adamw bool) (wall, cpu float64, err error) {
	s, c := time.Now(), cpuSeconds()
	err = w.Do(func() error {
		if adamw {
			if err := w.SetSeed(uint64(md.opt.Step)); err != nil {
				return err
			}
		}
		r, err := train.Step(md.p, md.imgs, md.labels, batch)
		if err != nil {
			return err
		}
		md.loss = r.Loss
		if !adamw {
			return nil
		}
		return md.opt.Apply(md.p, 1e-4)
	})
	return time.Since(s).Seconds(), cpuSeconds() - c, err
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	sort.Float64s(v)
	return v[len(v)/2]
}

func run(path, other string, batch, steps, warm, threads int, which string, adamw bool, cpu, tprof string, prec engine.Precision) error {
	t0 := time.Now()
	w := torch.NewWorkerThreads(threads)
	defer w.Close()
	defer osmem.KeepFreedHeap()() // as sptctl train does around its loop
	a, err := compile(w, path, batch, which, prec)
	if err != nil {
		return err
	}
	models := []*model{a}
	if other != "" {
		b, err := compile(w, other, batch, which, prec)
		if err != nil {
			return err
		}
		models = append(models, b)
	}
	defer w.Do(func() error {
		for _, md := range models {
			md.p.Close()
		}
		return nil
	})
	runtime.GC()
	debug.FreeOSMemory()
	compileS := time.Since(t0).Seconds()
	hwmCompile := hwmMB()

	for i := 0; i < warm; i++ {
		for _, md := range models {
			if _, _, err := md.step(w, batch, adamw); err != nil {
				return err
			}
		}
	}
	if cpu != "" {
		f, err := os.Create(cpu)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if tprof != "" {
		var stop func() error
		if err := w.Do(func() (err error) { stop, err = torch.StartProfile(tprof); return err }); err != nil {
			return err
		}
		defer func() {
			if err := w.Do(stop); err != nil {
				fmt.Fprintln(os.Stderr, "engine:", err)
			}
		}()
	}
	// times[k][i], cpus[k][i]: model k's step i. With two models the steps alternate
	// in pairs, the order swapped every pair, so both see the same machine.
	times := make([][]float64, len(models))
	cpus := make([][]float64, len(models))
	start := time.Now()
	for i := 0; i < steps; i++ {
		for j := range models {
			k := j
			if i%2 == 1 {
				k = len(models) - 1 - j
			}
			wall, c, err := models[k].step(w, batch, adamw)
			if err != nil {
				return err
			}
			times[k] = append(times[k], wall)
			cpus[k] = append(cpus[k], c)
		}
	}
	total := time.Since(start).Seconds()
	out := map[string]any{
		"impl": "sptctl", "precision": prec.String(), "batch": batch, "steps": steps, "threads": threads, "trainable_params": a.nTrain,
		"trainable_tensors": len(a.p.Trainable()), "compile_s": compileS, "step_median_s": median(times[0]),
		"images_per_s": float64(batch) / median(times[0]), "loss": a.loss,
		"cpu_step_median_s": median(cpus[0]), "peak_rss_mb_after_compile": hwmCompile, "peak_rss_mb": hwmMB(), "cpu_s_per_image": median(cpus[0]) / float64(batch),
	}
	if len(models) == 1 {
		out["images_per_s_mean"] = float64(batch*steps) / total
	} else {
		b := models[1]
		ratio := func(x [][]float64) float64 {
			r := make([]float64, steps)
			for i := range r {
				r[i] = x[0][i] / x[1][i]
			}
			return median(r)
		}
		out["ab"] = map[string]any{
			"a": a.path, "b": b.path, "b_trainable_params": b.nTrain, "b_loss": b.loss,
			"b_step_median_s": median(times[1]), "b_cpu_step_median_s": median(cpus[1]),
			"step_ratio_median": ratio(times), "cpu_ratio_median": ratio(cpus),
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// hwmMB is the process's peak resident set size so far (VmHWM), in MB.
func hwmMB() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			var kb int
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:")), "%d", &kb)
			return kb / 1024
		}
	}
	return 0
}

// cpuSeconds is the process's user + system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
