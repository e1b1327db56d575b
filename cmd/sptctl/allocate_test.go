package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/sensitivity"
)

// randomScores writes a score file with random scores for every initializer of model.
func randomScores(t *testing.T, model string, classes int) string {
	t.Helper()
	m, err := onnxio.Load(model)
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := onnxio.Fingerprint(m.Graph)
	r := rand.New(rand.NewPCG(1, 2))
	s := sensitivity.Scores{}
	for _, in := range m.Graph.Initializer {
		v := make([]float32, onnxio.NumElements(in.Dims))
		for i := range v {
			v[i] = r.Float32()
		}
		s[in.GetName()] = v
	}
	p := filepath.Join(t.TempDir(), "scores.safetensors")
	if err := sensitivity.Write(p, m, s, sensitivity.Info{Fingerprint: fp, Classes: classes, HeadSeed: 3}); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAllocateAndInject(t *testing.T) {
	model := "../../testdata/tv_op17_dynamic.onnx"
	scores := randomScores(t, model, 5)
	dir := t.TempDir()
	plan := filepath.Join(dir, "plan.json")
	code, out, stderr := sptctl(t, "allocate", "--model", model, "--scores", scores, "--budget", "10%", "--out", plan, "--json")
	if code != 0 {
		t.Fatalf("allocate: exit %d: %s", code, stderr)
	}
	var sum struct {
		Budget, Trainable, SparseEntries int64
		Structured, Vectors              []string
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("allocate --json: %v\n%s", err, out)
	}
	if d := sum.Trainable - sum.Budget; sum.Budget <= 0 || d*100 > sum.Budget || -d*100 > sum.Budget {
		t.Errorf("trainable %d not within 1%% of budget %d", sum.Trainable, sum.Budget)
	}
	tunable := filepath.Join(dir, "tunable.onnx")
	if code, _, stderr := sptctl(t, "inject", "--model", model, "--plan", plan, "--out", tunable); code != 0 {
		t.Fatalf("inject: exit %d: %s", code, stderr)
	}
	m, err := onnxio.Load(tunable)
	if err != nil {
		t.Fatal(err)
	}
	n, err := inject.TrainableCount(m)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := inject.LoadPlan(plan)
	if n != p.Totals.Total || n != sum.Trainable {
		t.Errorf("injected model has %d trainable parameters, plan says %d", n, p.Totals.Total)
	}
	// The table form names every block.
	code, out, _ = sptctl(t, "allocate", "--model", model, "--scores", scores, "--budget", "10%", "--out", plan)
	if code != 0 || !strings.Contains(out, "trainable") || !strings.Contains(out, "\n1 ") {
		t.Errorf("allocate table:\n%s", out)
	}
}

func TestAllocateInjectBadInput(t *testing.T) {
	model := "../../testdata/tv_op17_dynamic.onnx"
	other := "../../testdata/timm_op17.onnx"
	scores := randomScores(t, model, 5)
	dir := t.TempDir()
	plan := filepath.Join(dir, "plan.json")
	if code, _, stderr := sptctl(t, "allocate", "--model", model, "--scores", scores, "--budget", "10%", "--out", plan); code != 0 {
		t.Fatal(stderr)
	}
	out := filepath.Join(dir, "out")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"allocate", "--model", model, "--scores", scores, "--budget", "0", "--out", out}, "budget"},
		{[]string{"allocate", "--model", model, "--scores", scores, "--budget", "-5", "--out", out}, "budget"},
		{[]string{"allocate", "--model", model, "--scores", scores, "--budget", "100M", "--out", out}, "larger than"},
		{[]string{"allocate", "--model", model, "--scores", scores, "--rank", "0", "--out", out}, "rank"},
		{[]string{"allocate", "--model", model, "--scores", scores, "--strategy", "magic", "--out", out}, "magic"},
		{[]string{"allocate", "--model", other, "--scores", scores, "--out", out}, "another model"},
		{[]string{"allocate", "--model", model, "--out", out}, "--scores"},
		{[]string{"inject", "--model", other, "--plan", plan, "--out", out}, "another model"},
		{[]string{"inject", "--model", model, "--plan", model, "--out", out}, "plan"},
	}
	for _, c := range cases {
		code, _, stderr := sptctl(t, c.args...)
		if code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want an error saying %q", c.args[:3], code, stderr, c.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("%v wrote %s", c.args[:3], out)
		}
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Errorf("%d files in the output folder, want only plan.json", len(es))
	}
}
