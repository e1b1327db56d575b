// Command engine times sptctl's training executor (package engine/torch) on an ONNX
// model: Compile, then STEPS timed steps of train.Step (ZeroGrad + ForwardBackward: train-mode
// forward, mean cross-entropy, backward) on one fixed random batch, after WARMUP
// untimed steps. It prints one JSON line; /usr/bin/time -v around it gives peak RSS.
//
//	go build -o /tmp/engine ./bench/engine
//	/tmp/engine [-batch 64] [-steps 10] [-warmup 1] [-threads 2] [-trainable all|marked] [-adamw] [-precision fp32|bf16] MODEL
//
// -trainable all: every float initializer gets requires_grad (full fine-tuning).
// -trainable marked: only the initializers `sptctl inject` marked trainable (what
// `sptctl train` trains). -adamw adds what train.Fit does after the backward: the
// AdamW update in Go (AdamW.Apply: Grad, Floats, Update, SetFloats per trainable) and a SetSeed.
// The model proto is released after Compile (the executor copies the weights into
// libtorch). The JSON has the peak RSS (VmHWM) after Compile and at the end.
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
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/internal/meta"
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
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: engine [flags] MODEL")
		os.Exit(2)
	}
	pc, err := engine.ChoosePrecision(*precision, engine.CPUInfo())
	if err != nil {
		fmt.Fprintln(os.Stderr, "engine:", err)
		os.Exit(1)
	}
	if err := run(flag.Arg(0), *batch, *steps, *warm, *threads, *which, *adamw, *cpu, *tprof, pc.Precision); err != nil {
		fmt.Fprintln(os.Stderr, "engine:", err)
		os.Exit(1)
	}
}

func run(path string, batch, steps, warm, threads int, which string, adamw bool, cpu, tprof string, prec engine.Precision) error {
	t0 := time.Now()
	m, err := onnxio.Load(path)
	if err != nil {
		return err
	}
	var marked []string
	if which == "marked" {
		if marked, err = meta.Trainable(m); err != nil {
			return err
		}
	}
	w := torch.NewWorkerThreads(threads)
	defer w.Close()
	var p engine.Program
	var names []string
	var nTrain int64
	var per int
	var sample []int64
	err = w.Do(func() error {
		names = marked
		if which == "all" { // every float initializer (what Program.Params lists)
			names = nil
			for _, t := range m.GetGraph().GetInitializer() {
				if t.GetDataType() == int32(onnxpb.TensorProto_FLOAT) {
					names = append(names, t.GetName())
				}
			}
		}
		var err error
		if p, err = w.Compile(m, engine.Options{Trainable: names, Precision: prec}); err != nil {
			return err
		}
		for _, n := range p.Trainable() {
			s, _ := p.ParamShape(n)
			c := int64(1)
			for _, d := range s {
				c *= d
			}
			nTrain += c
		}
		sample = p.Inputs()[0].Shape[1:]
		per = 1
		for _, d := range sample {
			per *= int(d)
		}
		return nil
	})
	if err != nil {
		return err
	}
	names = p.Trainable()
	m = nil
	runtime.GC()
	debug.FreeOSMemory()
	compileS := time.Since(t0).Seconds()
	hwmCompile := hwmMB()

	rng := rand.New(rand.NewSource(1))
	imgs := make([]float32, batch*per)
	for k := range imgs {
		imgs[k] = float32(rng.NormFloat64())
	}
	labels := make([]int64, batch)
	for k := range labels {
		labels[k] = int64(k % 5)
	}
	opt := train.NewAdamW(1e-4)
	var loss float64
	step := func() error {
		return w.Do(func() error {
			if adamw {
				if err := w.SetSeed(uint64(opt.Step)); err != nil {
					return err
				}
			}
			r, err := train.Step(p, imgs, labels, batch)
			if err != nil {
				return err
			}
			loss = r.Loss
			if !adamw {
				return nil
			}
			return opt.Apply(p, 1e-4)
		})
	}
	for i := 0; i < warm; i++ {
		if err := step(); err != nil {
			return err
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
	times := make([]float64, steps)
	cpus := make([]float64, steps)
	start := time.Now()
	for i := 0; i < steps; i++ {
		s, c := time.Now(), cpuSeconds()
		if err := step(); err != nil {
			return err
		}
		times[i] = time.Since(s).Seconds()
		cpus[i] = cpuSeconds() - c
	}
	sort.Float64s(cpus)
	total := time.Since(start).Seconds()
	sort.Float64s(times)
	w.Do(func() error { p.Close(); return nil })
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"impl": "sptctl", "precision": prec.String(), "batch": batch, "steps": steps, "threads": threads, "trainable_params": nTrain,
		"trainable_tensors": len(names), "compile_s": compileS, "step_median_s": times[len(times)/2],
		"images_per_s": float64(batch) / times[len(times)/2], "images_per_s_mean": float64(batch*steps) / total, "loss": loss,
		"cpu_step_median_s": cpus[len(cpus)/2], "peak_rss_mb_after_compile": hwmCompile, "peak_rss_mb": hwmMB(), "cpu_s_per_image": cpus[len(cpus)/2] / float64(batch),
	})
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
