package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/sensitivity"
)

func TestSensitivityCommand(t *testing.T) {
	dir := t.TempDir()
	task := filepath.Join(dir, "task")
	fixture.FewShot(t, data.FewShotOptions{Classes: []int{5, 6, 7}, Train: 24, Val: 0, Test: 3, Seed: 1, Out: task})
	out, png := filepath.Join(dir, "s.safetensors"), filepath.Join(dir, "s.png")
	model := "../../testdata/tv_op14_static.onnx"
	code, stdout, stderr := sptctl(t, "sensitivity", "--model", model, "--data", task, "--batches", "2", "--batch-size", "8", "--out", out, "--plot", png, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var r sensitivityReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatal(err)
	}
	if r.Info.Classes != 3 || r.Info.Batches != 2 || r.Info.Examples != 16 || r.Summary.Total == 0 {
		t.Errorf("report %+v", r.Info)
	}
	scores, info, err := sensitivity.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(scores) == 0 || info.Fingerprint == "" {
		t.Errorf("score file: %d tensors, fingerprint %q", len(scores), info.Fingerprint)
	}
	if b, _ := os.ReadFile(png); !strings.HasPrefix(string(b), "\x89PNG") {
		t.Error("no PNG plot")
	}
	// The Σ grad² sums waited between the batches in a file beside the scores: gone.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if n := e.Name(); n != "task" && n != "s.safetensors" && n != "s.png" {
			t.Errorf("%s left in the output folder", n)
		}
	}
}

func TestSensitivityTrainBadInput(t *testing.T) {
	dir := t.TempDir()
	task := filepath.Join(dir, "task")
	fixture.FewShot(t, data.FewShotOptions{Train: 30, Val: 10, Test: 10, Seed: 1, Out: task}) // 10 classes
	bad := filepath.Join(dir, "bad")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "train800.txt"), []byte("images/missing.png 0\n"), 0o644)
	five := "../../testdata/tv_op17_alias.onnx"
	// An injected model with a 5-class head, for train.
	plan, tunable := filepath.Join(dir, "plan.json"), filepath.Join(dir, "tunable.onnx")
	if code, _, stderr := sptctl(t, "allocate", "--model", five, "--strategy", "linear", "--classes", "5", "--out", plan); code != 0 {
		t.Fatal(stderr)
	}
	if code, _, stderr := sptctl(t, "inject", "--model", five, "--plan", plan, "--out", tunable); code != 0 {
		t.Fatal(stderr)
	}
	out := filepath.Join(dir, "out.onnx")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"sensitivity", "--model", five, "--data", bad, "--out", out}, "missing.png"},
		{[]string{"sensitivity", "--model", five, "--data", task, "--split", "nope", "--out", out}, "nope"},
		{[]string{"sensitivity", "--model", five, "--data", filepath.Join(dir, "none"), "--out", out}, "none"},
		{[]string{"train", "--model", five, "--data", task, "--out", out}, "nothing to train"},
		{[]string{"train", "--model", tunable, "--data", task, "--out", out}, "10 classes"},
	}
	for _, c := range cases {
		code, _, stderr := sptctl(t, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want exit 1 saying %q", c.args[:5], code, stderr, c.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("%v wrote %s", c.args[:5], out)
		}
	}
}
