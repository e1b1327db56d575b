package bench

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/export/adapter"
	"github.com/sptctl/sptctl/export/adapter/adaptertest"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// TestAdapterLatency measures what serving tasks through one adapter-ready session
// costs: per-run latency with an active .onnx_adapter (ONNX Runtime's adapter API)
// and with the same tensors fed as plain inputs, against the task's merged model and
// its injected (unmerged) model, and the cost of switching adapters between runs
// (no session re-creation) against keeping one. It runs on vit_b_16 when
// SPTCTL_VIT_B16 names it (bench/make_vit_b16.py), else on the small fixture; RUNS
// sets the timed runs per case (default 20; 5 on vit_b_16), BATCH the batch size
// (default 1). It prints a table of wall-clock medians and extremes, and the median
// CPU time of the process per run (all threads), which other load disturbs less.
//
//	SPTCTL_VIT_B16=$PWD/bench/cache/vit_b_16.onnx go test ./bench -run AdapterLatency -v -timeout 30m
func TestAdapterLatency(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Skip(err)
	}
	path, runs := "../testdata/tv_op17_dynamic.onnx", 20
	if p := os.Getenv("SPTCTL_VIT_B16"); p != "" {
		path, runs = p, 5
	}
	if s := os.Getenv("RUNS"); s != "" {
		runs, _ = strconv.Atoi(s)
	}
	batch := int64(1)
	if s := os.Getenv("BATCH"); s != "" {
		batch, _ = strconv.ParseInt(s, 10, 64)
	}
	dir := t.TempDir()
	base, err := onnxio.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tasks := adaptertest.MakeAll(t, base)
	ready, err := adapter.BuildReady(base, adaptertest.Models(tasks))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := adapter.Info(ready)
	t.Logf("%s: %d tasks, adapter-ready model with %d adapter inputs, built in %.1fs", filepath.Base(path), len(tasks), len(info.Inputs), time.Since(start).Seconds())
	readyPath := filepath.Join(dir, "ready.onnx")
	if err := onnxio.Save(readyPath, ready); err != nil {
		t.Fatal(err)
	}
	type taskFiles struct{ name, model, merged, adapter string }
	var files []taskFiles
	plainFeeds := map[string]map[string]ort.Tensor{}
	var adapterBytes []int
	for _, task := range tasks {
		f := taskFiles{name: task.Name, model: filepath.Join(dir, task.Name+".onnx"), merged: filepath.Join(dir, task.Name+".merged.onnx"),
			adapter: filepath.Join(dir, task.Name+adapter.Ext)}
		if err := onnxio.Save(f.model, task.Model); err != nil {
			t.Fatal(err)
		}
		m := proto.Clone(task.Model).(*onnxpb.ModelProto)
		if _, err := export.Merge(m, base); err != nil {
			t.Logf("%s: merge: %v (no merged row)", task.Name, err)
			f.merged = ""
		} else if err := onnxio.Save(f.merged, m); err != nil {
			t.Fatal(err)
		}
		ts, err := adapter.ForTask(ready, task.Model)
		if err != nil {
			t.Fatal(err)
		}
		if err := adapter.Write(f.adapter, ts); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(f.adapter)
		adapterBytes = append(adapterBytes, int(st.Size()))
		feeds := map[string]ort.Tensor{}
		for k, v := range ts {
			if v.DataType == onnxio.Int64 {
				x, _ := v.Int64s()
				feeds[k] = ort.Tensor{Shape: v.Dims, Int64: x}
			} else {
				x, _ := v.Floats()
				feeds[k] = ort.Tensor{Shape: v.Dims, Data: x}
			}
		}
		plainFeeds[task.Name] = feeds
		files = append(files, f)
	}
	base = nil
	ready = nil
	tasks = nil
	runtime.GC()

	rs, err := ort.Open(readyPath)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	in := rs.Inputs()[0]
	shape := slices.Clone(in.Shape)
	shape[0] = batch
	rng := rand.New(rand.NewPCG(1, 2))
	x := ort.Tensor{Shape: shape, Data: make([]float32, onnxio.NumElements(shape))}
	for i := range x.Data {
		x.Data[i] = float32(rng.NormFloat64())
	}
	feed := map[string]ort.Tensor{in.Name: x}

	// Cases are timed interleaved (one run of each case per round, after a warm-up
	// round), so that load from other processes hits all of them alike.
	type bcase struct {
		name string
		f    func(i int) error
	}
	var cases []bcase
	row := func(name string, f func(i int) error) { cases = append(cases, bcase{name, f}) }
	timeOnce := func(f func() error) float64 {
		s := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		return time.Since(s).Seconds() * 1000
	}
	var loadMS, openMS []float64
	adapters := map[string]*ort.LoraAdapter{}
	for _, f := range files {
		loadMS = append(loadMS, timeOnce(func() error {
			a, err := ort.LoadLoraAdapter(f.adapter)
			adapters[f.name] = a
			return err
		}))
		defer adapters[f.name].Close()
	}
	t0 := files[0]
	openMS = append(openMS, timeOnce(func() error {
		s, err := ort.Open(readyPath)
		if err == nil {
			s.Close()
		}
		return err
	}))

	baseS, err := ort.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer baseS.Close()
	row("base model", func(int) error { _, err := baseS.Run(feed); return err })
	for _, f := range files {
		if f.merged != "" {
			ms, err := ort.Open(f.merged)
			if err != nil {
				t.Fatal(err)
			}
			defer ms.Close()
			row(f.name+": merged model", func(int) error { _, err := ms.Run(feed); return err })
		}
		ts, err := ort.Open(f.model)
		if err != nil {
			t.Fatal(err)
		}
		defer ts.Close()
		row(f.name+": injected task model", func(int) error { _, err := ts.Run(feed); return err })
		a := adapters[f.name]
		row(f.name+": ready + .onnx_adapter (same every run)", func(int) error { _, err := rs.RunWithAdapters(feed, a); return err })
	}
	row("ready, no adapter (base function)", func(int) error { _, err := rs.Run(feed); return err })
	order := []*ort.LoraAdapter{adapters[files[0].name], adapters[files[1].name], adapters[files[2].name]}
	row("ready, adapter switched every run (A,B,C,A,…)", func(i int) error {
		_, err := rs.RunWithAdapters(feed, order[(i+3)%3])
		return err
	})
	var extra []ort.IOInfo
	for _, sl := range info.Inputs {
		typ := "float32"
		if sl.DataType == "INT64" {
			typ = "int64"
		}
		extra = append(extra, ort.IOInfo{Name: sl.Name, Shape: sl.Dims, Type: typ})
	}
	ps, err := ort.OpenWithInputs(readyPath, extra)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	plain := func(name string) map[string]ort.Tensor {
		m := map[string]ort.Tensor{in.Name: x}
		for k, v := range plainFeeds[name] {
			m[k] = v
		}
		return m
	}
	pf := []map[string]ort.Tensor{plain(files[0].name), plain(files[1].name), plain(files[2].name)}
	row(t0.name+": ready + tensors as plain inputs", func(int) error { _, err := ps.Run(pf[0]); return err })
	row("ready, plain inputs switched every run", func(i int) error { _, err := ps.Run(pf[(i+3)%3]); return err })

	times := make([][]float64, len(cases))
	cpu := make([][]float64, len(cases))
	for r := -1; r < runs; r++ {
		for k, c := range cases {
			c0 := cpuMS()
			st := time.Now()
			if err := c.f(r); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if r >= 0 {
				times[k] = append(times[k], time.Since(st).Seconds()*1000)
				cpu[k] = append(cpu[k], cpuMS()-c0)
			}
		}
	}
	var rows [][]string
	for k, c := range cases {
		ds, cs := times[k], cpu[k]
		slices.Sort(ds)
		slices.Sort(cs)
		rows = append(rows, []string{c.name, fmt.Sprintf("%.2f", ds[len(ds)/2]), fmt.Sprintf("%.2f", ds[0]), fmt.Sprintf("%.2f", ds[len(ds)-1]), fmt.Sprintf("%.2f", cs[len(cs)/2])})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s, batch %d, %d runs per case, interleaved (median / min / max ms), ONNX Runtime %s, %d CPUs\n\n", filepath.Base(path), batch, runs, ort.Version(), runtime.NumCPU())
	fmt.Fprintf(&b, "| case | median ms | min ms | max ms | median CPU ms |\n| --- | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r[0], r[1], r[2], r[3], r[4])
	}
	fmt.Fprintf(&b, "\none-off costs: load an .onnx_adapter (CreateLoraAdapter) %s ms (%s bytes); open a session of the ready model %.0f ms\n",
		joinF(loadMS), joinI(adapterBytes), openMS[0])
	t.Log(b.String())
	if out := os.Getenv("BENCH_OUT"); out != "" {
		os.WriteFile(out, []byte(b.String()), 0o644)
	}
}

// cpuMS is the CPU time this process has used (all threads, user + system), in ms:
// less disturbed than wall time when other processes load the machine.
func cpuMS() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e6
}

func joinF(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(s, " / ")
}

func joinI(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, " / ")
}
