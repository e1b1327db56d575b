// Command quantize is the measuring half of bench/quantize/run.sh.
//
//	quantize forms MODEL DIR
//	    writes DIR/int8-integer.onnx and DIR/int8-fused.onnx: MODEL's linear layers in
//	    the two 8-bit forms package export/quantize can write, to time them side by side.
//	quantize ortversion
//	    prints the version of the ONNX Runtime library export/ort loads.
//	quantize latency [-runs 20] [-warmup 3] [-batch 1,8] NAME=MODEL ...
//	    ONNX Runtime latency (package export/ort, as `sptctl eval` uses it: one thread
//	    per core) of each model on a seeded random 224x224 batch, per batch size: every
//	    model gets WARMUP untimed runs, then RUNS rounds in which each model runs once,
//	    in turn, so that load from other processes hits them alike. Prints JSON: per
//	    batch size and model the median and quartiles in seconds, the ratio of the
//	    median to the first model's, and the file size (model plus side files).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/export/quantize"
	"github.com/sptctl/sptctl/onnxio"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: quantize forms MODEL DIR | latency [flags] NAME=MODEL ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "forms":
		err = forms(os.Args[2:])
	case "latency":
		err = latency(os.Args[2:])
	case "ortversion":
		if err = ort.Init(); err == nil {
			fmt.Println(ort.Version())
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "quantize:", err)
		os.Exit(1)
	}
}

func forms(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: forms MODEL DIR")
	}
	for name, opt := range map[string]quantize.Options{
		"int8-integer": {Bits: 8, Form: quantize.Integer}, "int8-fused": {Bits: 8, Form: quantize.Fused},
		"int4-acc0": {Bits: 4}, "int4-acc4": {Bits: 4, AccuracyLevel: 4},
	} {
		m, err := onnxio.Load(args[0])
		if err != nil {
			return err
		}
		if _, err := quantize.Model(m, opt); err != nil {
			return err
		}
		if err := onnxio.Save(filepath.Join(args[1], name+".onnx"), m); err != nil {
			return err
		}
	}
	return nil
}

func latency(args []string) error {
	fs := flag.NewFlagSet("latency", flag.ContinueOnError)
	runs := fs.Int("runs", 20, "timed rounds")
	warm := fs.Int("warmup", 3, "untimed runs per model first")
	batches := fs.String("batch", "1,8", "batch sizes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("usage: latency NAME=MODEL ...")
	}
	if err := ort.Init(); err != nil {
		return err
	}
	type model struct {
		name, path string
		s          *ort.Session
		size       int64
	}
	var ms []*model
	for _, a := range fs.Args() {
		name, path, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("%q: want NAME=MODEL", a)
		}
		s, err := ort.Open(path)
		if err != nil {
			return err
		}
		defer s.Close()
		size, err := fileSize(path)
		if err != nil {
			return err
		}
		ms = append(ms, &model{name: name, path: path, s: s, size: size})
	}
	out := map[string]any{"runs": *runs, "warmup": *warm, "threads": runtime.NumCPU()}
	sizes := map[string]any{}
	for _, m := range ms {
		sizes[m.name] = map[string]any{"path": m.path, "bytes": m.size, "ratio_to_first": float64(m.size) / float64(ms[0].size)}
	}
	out["size"] = sizes
	rng := rand.New(rand.NewSource(1))
	for _, bs := range strings.Split(*batches, ",") {
		b, err := strconv.Atoi(bs)
		if err != nil || b < 1 {
			return fmt.Errorf("-batch %q", *batches)
		}
		x := make([]float32, b*3*224*224)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		times := make([][]float64, len(ms))
		run := func(i int) (float64, error) {
			in := ms[i].s.Inputs()[0]
			t := time.Now()
			_, err := ms[i].s.Run(map[string]ort.Tensor{in.Name: {Shape: []int64{int64(b), 3, 224, 224}, Data: x}})
			if err != nil {
				return 0, fmt.Errorf("%s: %w", ms[i].name, err)
			}
			return time.Since(t).Seconds(), nil
		}
		for i := range ms {
			for w := 0; w < *warm; w++ {
				if _, err := run(i); err != nil {
					return err
				}
			}
		}
		for r := 0; r < *runs; r++ {
			for i := range ms {
				s, err := run(i)
				if err != nil {
					return err
				}
				times[i] = append(times[i], s)
			}
		}
		res := map[string]any{}
		var first float64
		for i, m := range ms {
			ts := times[i]
			sort.Float64s(ts)
			n := len(ts)
			med := ts[n/2]
			if i == 0 {
				first = med
			}
			res[m.name] = map[string]any{"median_s": med, "p25_s": ts[n/4], "p75_s": ts[3*n/4], "ratio_to_first": med / first}
		}
		out["batch"+bs] = res
		fmt.Fprintf(os.Stderr, "batch %d done\n", b)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// fileSize is the size of a model file and the external data files beside it that it
// names (onnxio.Save's side file has the model's name plus ".data").
func fileSize(path string) (int64, error) {
	var n int64
	for _, p := range []string{path, path + ".data"} {
		if st, err := os.Stat(p); err == nil {
			n += st.Size()
		} else if p == path {
			return 0, err
		}
	}
	return n, nil
}
