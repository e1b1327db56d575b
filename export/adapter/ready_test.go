package adapter_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sptctl/sptctl/export/adapter"
	"github.com/sptctl/sptctl/export/adapter/adaptertest"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

const fixture = "../../testdata/tv_op17_dynamic.onnx"

func loadBase(t testing.TB) *onnxpb.ModelProto {
	t.Helper()
	m, err := onnxio.Load(fixture)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// input is the fixture's input batch repeated to batch rows.
func input(t testing.TB, batch int64) map[string]ort.Tensor {
	t.Helper()
	a, err := npy.Read(strings.TrimSuffix(fixture, ".onnx") + ".input.npy")
	if err != nil {
		t.Fatal(err)
	}
	per := int64(len(a.Float32)) / a.Shape[0]
	var data []float32
	for i := int64(0); i < batch; i++ {
		j := i % a.Shape[0]
		data = append(data, a.Float32[j*per:(j+1)*per]...)
	}
	return map[string]ort.Tensor{"input": {Shape: append([]int64{batch}, a.Shape[1:]...), Data: data}}
}

func save(t testing.TB, dir, name string, m *onnxpb.ModelProto) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := onnxio.Save(p, m); err != nil {
		t.Fatal(err)
	}
	return p
}

func logits(t testing.TB, out map[string]ort.Tensor) ort.Tensor {
	t.Helper()
	l, ok := out["logits"]
	if !ok || len(l.Shape) != 2 {
		t.Fatalf("no [batch, classes] logits output: %v", out)
	}
	return l
}

// One session of the adapter-ready model, switching .onnx_adapter files per run
// through ONNX Runtime's own adapter API, reproduces each task model's outputs (ONNX
// Runtime on the task model is the oracle), and with no adapter the base model's;
// feeding the same tensors as plain inputs does too.
func TestReadyReproducesTasks(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	base := loadBase(t)
	tasks := adaptertest.MakeAll(t, base)
	ready, err := adapter.BuildReady(base, adaptertest.Models(tasks))
	if err != nil {
		t.Fatal(err)
	}
	info, err := adapter.Info(ready)
	if err != nil {
		t.Fatal(err)
	}
	if info.Classes != 12 || info.BaseClasses != 10 {
		t.Fatalf("ready head: %d classes (base %d), want 12 (10)", info.Classes, info.BaseClasses)
	}
	readyPath := save(t, dir, "ready.onnx", ready)
	in := input(t, 3)

	want := map[string][]float32{}
	adapters := map[string]*ort.LoraAdapter{}
	tensors := map[string]map[string]adapter.Tensor{}
	for _, task := range tasks {
		out, err := ort.RunFile(save(t, dir, task.Name+".onnx", task.Model), in)
		if err != nil {
			t.Fatal(err)
		}
		l := logits(t, out)
		if int(l.Shape[1]) != task.Classes {
			t.Fatalf("%s: %d logits, want %d", task.Name, l.Shape[1], task.Classes)
		}
		want[task.Name] = l.Data
		ts, err := adapter.ForTask(ready, task.Model)
		if err != nil {
			t.Fatalf("%s: %v", task.Name, err)
		}
		if err := adapter.Check(ready, ts); err != nil {
			t.Fatalf("%s: %v", task.Name, err)
		}
		if c, ok := adapter.TaskClasses(ready, ts); !ok || c != task.Classes {
			t.Errorf("%s: TaskClasses %d %v, want %d", task.Name, c, ok, task.Classes)
		}
		p := filepath.Join(dir, task.Name+adapter.Ext)
		if err := adapter.Write(p, ts); err != nil {
			t.Fatal(err)
		}
		back, err := adapter.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := adapter.Check(ready, back); err != nil {
			t.Fatalf("%s read back: %v", task.Name, err)
		}
		a, err := ort.LoadLoraAdapter(p)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		adapters[task.Name], tensors[task.Name] = a, ts
	}
	baseOut, err := ort.RunFile(fixture, in)
	if err != nil {
		t.Fatal(err)
	}
	want["base"] = logits(t, baseOut).Data

	s, err := ort.Open(readyPath)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Inputs(); len(got) != 1 || got[0].Name != "input" {
		t.Fatalf("ready model's required inputs: %v, want just the image", got)
	}
	classes := map[string]int{"base": 10}
	for _, task := range tasks {
		classes[task.Name] = task.Classes
	}
	check := func(how, name string, out map[string]ort.Tensor) {
		t.Helper()
		l := logits(t, out)
		if l.Shape[1] != 12 {
			t.Fatalf("%s %s: %d logits, want 12", how, name, l.Shape[1])
		}
		c := classes[name]
		got := adaptertest.Columns(l.Data, 12, c)
		d := adaptertest.RelDiff(got, want[name])
		t.Logf("%-14s %-5s rel diff %.2e", how, name, d)
		if d > 1e-5 {
			t.Errorf("%s %s: relative difference %.3g from the task model", how, name, d)
		}
		for r := 0; r < len(l.Data)/12; r++ {
			for k := c; k < 12; k++ {
				if l.Data[r*12+k] != adapter.PadLogit {
					t.Errorf("%s %s: padded logit %d is %g, want PadLogit", how, name, k, l.Data[r*12+k])
					return
				}
			}
		}
	}
	// Switch adapters run by run on one session.
	for _, name := range []string{"taskA", "taskB", "base", "taskC", "taskA", "base", "taskB", "taskC"} {
		var out map[string]ort.Tensor
		if name == "base" {
			out, err = s.Run(in)
		} else {
			out, err = s.RunWithAdapters(in, adapters[name])
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		check("adapter API", name, out)
	}
	// Concurrent runs of one session, each with its own adapter (per-request tasks).
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for g := 0; g < 6; g++ {
		name := tasks[g%len(tasks)].Name
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 3; k++ {
				out, err := s.RunWithAdapters(in, adapters[name])
				if err != nil {
					errs <- err.Error()
					return
				}
				l := out["logits"]
				if d := adaptertest.RelDiff(adaptertest.Columns(l.Data, 12, classes[name]), want[name]); d > 1e-5 {
					errs <- fmt.Sprintf("concurrent %s: relative difference %.3g", name, d)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	// The same tensors as plain inputs, on a session that declares them.
	slots, err := adapter.Slots(ready)
	if err != nil {
		t.Fatal(err)
	}
	var extra []ort.IOInfo
	for _, sl := range slots {
		extra = append(extra, ort.IOInfo{Name: sl.Name, Shape: sl.Dims, Type: map[int32]string{onnxio.Float: "float32", onnxio.Int64: "int64"}[sl.DataType]})
	}
	ps, err := ort.OpenWithInputs(readyPath, extra)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	defaults, err := adapter.Defaults(ready)
	if err != nil {
		t.Fatal(err)
	}
	tensors["base"] = defaults
	for _, name := range []string{"taskB", "base", "taskA", "taskC"} {
		feeds := map[string]ort.Tensor{"input": in["input"]}
		for k, v := range tensors[name] {
			feeds[k] = plain(t, v)
		}
		out, err := ps.Run(feeds)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		check("plain inputs", name, out)
	}
}

func plain(t testing.TB, v adapter.Tensor) ort.Tensor {
	t.Helper()
	if v.DataType == onnxio.Int64 {
		x, err := v.Int64s()
		if err != nil {
			t.Fatal(err)
		}
		return ort.Tensor{Shape: v.Dims, Int64: x}
	}
	x, err := v.Floats()
	if err != nil {
		t.Fatal(err)
	}
	return ort.Tensor{Shape: v.Dims, Data: x}
}

// The ready graph checks: every slot is a graph input with a default, the defaults
// compute the base model (checked above through ONNX Runtime), and a task model not
// among the union is refused with a reason.
func TestReadyRefusals(t *testing.T) {
	base := loadBase(t)
	specs := adaptertest.Specs()
	a := adaptertest.Make(t, base, specs[0])
	ready, err := adapter.BuildReady(base, []*onnxpb.ModelProto{a.Model})
	if err != nil {
		t.Fatal(err)
	}
	b := adaptertest.Make(t, base, specs[1])
	if _, err := adapter.ForTask(ready, b.Model); err == nil || !strings.Contains(err.Error(), "rebuild the adapter-ready model") {
		t.Errorf("ForTask of a task outside the union: %v", err)
	}
	// LoRA and Adapter on one layer cannot share a ready graph.
	d := specs[2]
	d.Name = "taskD"
	d.Layer = func(i int, l *surgery.Linear) adaptertest.Unit {
		if i%4 == 3 {
			return adaptertest.Unit{Mode: inject.ModeLoRA, Rank: 2}
		}
		return adaptertest.Unit{}
	}
	c := adaptertest.Make(t, base, specs[2])
	dm := adaptertest.Make(t, base, d)
	if _, err := adapter.BuildReady(base, []*onnxpb.ModelProto{dm.Model, c.Model}); err == nil || !strings.Contains(err.Error(), "has lora in task 1 and adapter in task 2") {
		t.Errorf("LoRA and Adapter on one layer: %v", err)
	}
	if _, err := adapter.BuildReady(base, []*onnxpb.ModelProto{base}); err == nil {
		t.Error("BuildReady accepted a model that is not an injected task")
	}
	other, err := onnxio.Load("../../testdata/tv_op14_static.onnx")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adapter.BuildReady(other, []*onnxpb.ModelProto{a.Model}); err == nil || !strings.Contains(err.Error(), "another base model") {
		t.Errorf("BuildReady with another base: %v", err)
	}
}

// The ready model passes ONNX's own checker with full shape inference (Debian's
// python3-onnx), when it is installed.
func TestReadyPassesONNXChecker(t *testing.T) {
	if _, err := exec.Command("/usr/bin/python3", "-c", "import onnx").CombinedOutput(); err != nil {
		t.Skip("/usr/bin/python3 with onnx not available")
	}
	base := loadBase(t)
	ready, err := adapter.BuildReady(base, adaptertest.Models(adaptertest.MakeAll(t, base)))
	if err != nil {
		t.Fatal(err)
	}
	p := save(t, t.TempDir(), "ready.onnx", ready)
	out, err := exec.Command("/usr/bin/python3", "-c",
		"import onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); "+
			"inits = {t.name for t in m.graph.initializer}; "+
			"print(sum(1 for i in m.graph.input if i.name in inits))", p).CombinedOutput()
	if err != nil {
		t.Fatalf("onnx.checker: %v\n%s", err, out)
	}
	info, _ := adapter.Info(ready)
	if strings.TrimSpace(string(out)) != fmt.Sprint(len(info.Inputs)) {
		t.Errorf("onnx sees %s inputs with initializers, want %d", out, len(info.Inputs))
	}
}
