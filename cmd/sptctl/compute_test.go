package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
)

// --precision and --threads: bf16 on a CPU without bfloat16 (a cpuinfo file without
// the flags, through SPTCTL_CPUINFO) is one clear error and writes nothing, auto falls
// back to fp32 and says so, bad values are usage errors; train records the precision
// it ran at in the trained model.
func TestPrecisionAndThreadsFlags(t *testing.T) {
	dir := t.TempDir()
	task := filepath.Join(dir, "task")
	fixture.FewShot(t, data.FewShotOptions{Classes: []int{0, 1, 2, 3, 4}, Train: 10, Val: 5, Test: 0, Seed: 1, Out: task})
	model := "../../testdata/tv_op17_alias.onnx"
	out := filepath.Join(dir, "s.safetensors")
	noBF16 := filepath.Join(dir, "cpuinfo")
	os.WriteFile(noBF16, []byte("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"), 0o644)
	sens := []string{"sensitivity", "--model", model, "--data", task, "--batches", "1", "--batch-size", "4", "--out", out}

	t.Setenv("SPTCTL_CPUINFO", noBF16)
	code, _, stderr := sptctl(t, append(sens, "--precision", "bf16")...)
	if code != 1 || !strings.Contains(stderr, "--precision bf16: this CPU has no bfloat16") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("bf16 without CPU support: exit %d, %q; want exit 1 and one line", code, stderr)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("bf16 without CPU support wrote the scores")
	}
	code, _, stderr = sptctl(t, append(sens, "--precision", "auto", "--threads", "1")...)
	if code != 0 || !strings.Contains(stderr, "precision: fp32 (auto: the CPU has neither avx512_bf16 nor amx_bf16)") {
		t.Errorf("auto without CPU support: exit %d, %q; want fp32 and the reason", code, stderr)
	}
	for _, bad := range [][]string{{"--precision", "fp16"}, {"--threads", "-1"}} {
		if code, _, stderr := sptctl(t, append(sens, bad...)...); code != 2 || !strings.Contains(stderr, bad[0]) {
			t.Errorf("%v: exit %d, %q; want a usage error naming the flag", bad, code, stderr)
		}
	}

	// Train on this machine's CPU: the precision auto picks is recorded.
	t.Setenv("SPTCTL_CPUINFO", "")
	want, err := engine.ChoosePrecision("auto", engine.CPUInfo())
	if err != nil {
		t.Fatal(err)
	}
	plan, tunable, trained := filepath.Join(dir, "plan.json"), filepath.Join(dir, "tunable.onnx"), filepath.Join(dir, "trained.onnx")
	if code, _, stderr := sptctl(t, "allocate", "--model", model, "--strategy", "linear", "--classes", "5", "--out", plan); code != 0 {
		t.Fatal(stderr)
	}
	if code, _, stderr := sptctl(t, "inject", "--model", model, "--plan", plan, "--out", tunable); code != 0 {
		t.Fatal(stderr)
	}
	code, _, stderr = sptctl(t, "train", "--model", tunable, "--data", task, "--epochs", "1", "--batch-size", "5", "--warmup", "0",
		"--val-split", "", "--out", trained, "--threads", "2")
	if code != 0 {
		t.Fatalf("train: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "precision: "+want.Note) {
		t.Errorf("train did not say its precision (%q): %s", want.Note, stderr)
	}
	m, err := onnxio.Load(trained)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := onnxio.Metadata(m, meta.KeyPrecision); got != want.Precision.String() {
		t.Errorf("trained model's %s = %q, want %q", meta.KeyPrecision, got, want.Precision)
	}
}

// --threads on the ONNX Runtime commands (eval, run, export): below one, above the
// bound or not a number is a usage error naming the flag (exit 2, nothing written);
// the default is the cores this process may run on; `run --threads 1` writes the same
// output as the default and as PyTorch.
func TestThreadsOnORTCommands(t *testing.T) {
	dir := t.TempDir()
	model, in := "../../testdata/tv_op17_dynamic.onnx", "../../testdata/tv_op17_dynamic.input.npy"
	task := fewShot(t, dir, "0-4", 5)
	out := filepath.Join(dir, "y.npy")
	cmds := map[string][]string{
		"run":    {"run", "--model", model, "--input", in, "--output", out},
		"eval":   {"eval", "--model", model, "--data", task},
		"export": {"export", "--model", model, "--merge", "--out", filepath.Join(dir, "merged.onnx")},
	}
	for name, args := range cmds {
		for _, bad := range []string{"0", "-2", "100000", "two"} {
			code, _, stderr := sptctl(t, append(args, "--threads", bad)...)
			if code != 2 || !strings.Contains(stderr, "threads") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("%s --threads %s: exit %d, %q; want exit 2 and one line naming --threads", name, bad, code, stderr)
			}
		}
		if _, help, _ := sptctl(t, name, "--help"); !strings.Contains(help, "--threads") {
			t.Errorf("%s --help does not list --threads: %s", name, help)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("a refused run wrote its output")
	}

	want, err := npy.Read("../../testdata/tv_op17_dynamic.output.npy")
	if err != nil {
		t.Fatal(err)
	}
	var got [][]float32
	for _, threads := range [][]string{nil, {"--threads", "1"}} {
		if code, _, stderr := sptctl(t, append(cmds["run"], threads...)...); code != 0 {
			t.Fatalf("run %v: exit %d: %s", threads, code, stderr)
		}
		y, err := npy.Read(out)
		if err != nil {
			t.Fatal(err)
		}
		if d := fixture.RelDiff(y.Float32, want.Float32); d > 1e-5 {
			t.Errorf("run %v: differs from PyTorch by %.3g", threads, d)
		}
		got = append(got, y.Float32)
	}
	if d := fixture.RelDiff(got[1], got[0]); d > 1e-6 {
		t.Errorf("run --threads 1 differs from the default (%d threads) by %.3g", runtime.NumCPU(), d)
	}
	code, stdout, stderr := sptctl(t, append(cmds["eval"], "--threads", "1", "--json")...)
	if code != 0 || !strings.Contains(stdout, `"top1"`) {
		t.Errorf("eval --threads 1: exit %d, %s %s", code, stdout, stderr)
	}
}
