// Command serve measures ONNX Runtime latency (package export/ort, as `sptctl eval` and
// `sptctl run` use it) of several models on one batch-1 input: every model gets WARMUP
// untimed runs, then RUNS rounds in which each model runs once, in turn (base, merged,
// sidecar, base, ...), so that load from other processes hits them alike. Prints one
// JSON object: per model the median and quartiles in seconds, and each median over the
// first model's.
//
//	go build -o /tmp/serve ./bench/serve
//	/tmp/serve [-runs 25] [-warmup 3] NAME=MODEL.onnx ...
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/sptctl/sptctl/export/ort"
)

func main() {
	runs := flag.Int("runs", 25, "timed rounds")
	warm := flag.Int("warmup", 3, "untimed runs per model first")
	flag.Parse()
	if err := run(flag.Args(), *runs, *warm); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

func run(args []string, runs, warm int) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: serve NAME=MODEL ...")
	}
	if err := ort.Init(); err != nil {
		return err
	}
	type model struct {
		name, path string
		s          *ort.Session
		in         map[string]ort.Tensor
		times      []float64
		open       float64
	}
	rng := rand.New(rand.NewSource(1))
	x := make([]float32, 3*224*224)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	var ms []*model
	for _, a := range args {
		name, path, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("%q: want NAME=MODEL", a)
		}
		t := time.Now()
		s, err := ort.Open(path)
		if err != nil {
			return err
		}
		in := s.Inputs()[0]
		m := &model{name: name, path: path, s: s, open: time.Since(t).Seconds(),
			in: map[string]ort.Tensor{in.Name: {Shape: []int64{1, 3, 224, 224}, Data: x}}}
		for i := 0; i < warm; i++ {
			if _, err := s.Run(m.in); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		ms = append(ms, m)
	}
	for r := 0; r < runs; r++ {
		for _, m := range ms {
			t := time.Now()
			if _, err := m.s.Run(m.in); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			m.times = append(m.times, time.Since(t).Seconds())
		}
	}
	out := map[string]any{"runs": runs, "warmup": warm}
	var base float64
	for i, m := range ms {
		sort.Float64s(m.times)
		n := len(m.times)
		med := m.times[n/2]
		if i == 0 {
			base = med
		}
		out[m.name] = map[string]any{"path": m.path, "median_s": med, "p25_s": m.times[n/4], "p75_s": m.times[3*n/4],
			"min_s": m.times[0], "open_s": m.open, "ratio_to_first": med / base}
		m.s.Close()
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
