package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/meta"
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
