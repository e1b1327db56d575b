// Command iobench loads an ONNX model with onnxio.Load and, with -save, writes it back
// with onnxio.Save, printing how long each took as one JSON line. It does nothing else,
// so that /usr/bin/time -v around it measures the peak memory of onnxio alone.
//
//	go build -o /tmp/iobench ./bench/iobench
//	/usr/bin/time -v /tmp/iobench [-save OUT [-plain | -encode]] [-cpuprofile F] [-memprofile F] MODEL
//
// bench/io.sh runs it beside Python's onnx.load / onnx.save and prints the table (see
// bench/RESULTS-io.md).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/sptctl/sptctl/onnxio"
)

func main() {
	save := flag.String("save", "", "write the loaded model here with onnxio.Save")
	plain := flag.Bool("plain", false, "with -save: write with onnxio.EncodeTo into the file itself instead of onnxio.Save (no fsync, no temporary file and rename: what Python's onnx.save does)")
	encode := flag.Bool("encode", false, "with -save: write with onnxio.Encode (the whole encoding in one []byte) + os.WriteFile")
	cpu := flag.String("cpuprofile", "", "write a CPU profile here")
	mem := flag.String("memprofile", "", "write an allocation profile (alloc_space) here")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: iobench [-save OUT [-plain | -encode]] [-cpuprofile F] [-memprofile F] MODEL")
		os.Exit(2)
	}
	if *mem != "" {
		runtime.MemProfileRate = 64 << 10
	}
	if *cpu != "" {
		f, err := os.Create(*cpu)
		if err != nil {
			fail(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail(err)
		}
		defer pprof.StopCPUProfile()
	}

	res := map[string]any{"model": flag.Arg(0)}
	t0 := time.Now()
	m, err := onnxio.Load(flag.Arg(0))
	if err != nil {
		fail(err)
	}
	res["load_s"] = time.Since(t0).Seconds()
	res["initializers"] = len(m.GetGraph().GetInitializer())
	res["nodes"] = len(m.GetGraph().GetNode())
	if *save != "" {
		t1 := time.Now()
		switch {
		case *plain:
			f, err := os.Create(*save)
			if err != nil {
				fail(err)
			}
			if err := onnxio.EncodeTo(f, m); err != nil {
				fail(err)
			}
			if err := f.Close(); err != nil {
				fail(err)
			}
		case *encode:
			b, err := onnxio.Encode(m)
			if err != nil {
				fail(err)
			}
			if err := os.WriteFile(*save, b, 0o644); err != nil {
				fail(err)
			}
		default:
			if err := onnxio.Save(*save, m); err != nil {
				fail(err)
			}
		}
		res["save_s"] = time.Since(t1).Seconds()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res["go_total_alloc_mb"] = float64(ms.TotalAlloc) / 1e6
	res["go_heap_sys_mb"] = float64(ms.HeapSys) / 1e6
	res["go_num_gc"] = ms.NumGC
	if *mem != "" {
		runtime.GC() // the allocs profile is published at the end of a GC cycle
		f, err := os.Create(*mem)
		if err != nil {
			fail(err)
		}
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			fail(err)
		}
		f.Close()
	}
	runtime.KeepAlive(m)
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "iobench:", err)
	os.Exit(1)
}
