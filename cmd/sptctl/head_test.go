package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/safetensors"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/sensitivity"
)

// TestProbeHead scores a fixture through a fitted head and follows the head through
// the pipeline: the scores are the same bits on a second run, the score file and the
// plan record the head, inject starts from it, and the injected model, untrained,
// classifies the test split (under ONNX Runtime) at least as well as `--strategy
// linear` after training with the SPT suite's schedule.
func TestProbeHead(t *testing.T) {
	const model = "../../testdata/tv_op17_alias.onnx"
	dir := t.TempDir()
	task := filepath.Join(dir, "task")
	if err := data.FewShot(data.FewShotOptions{From: fashionMNIST, Classes: []int{0, 1, 2, 3, 4}, Train: 160, Val: 40, Test: 100, Seed: 5, Out: task}); err != nil {
		t.Fatal(err)
	}
	score := func(out string, args ...string) (sensitivity.Scores, sensitivity.Info) {
		t.Helper()
		code, _, stderr := sptctl(t, append([]string{"sensitivity", "--model", model, "--data", task, "--batches", "2", "--batch-size", "16",
			"--seed", "3", "--head-seed", "4", "--out", out, "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("sensitivity %v: exit %d\n%s", args, code, stderr)
		}
		s, info, err := sensitivity.Read(out)
		if err != nil {
			t.Fatal(err)
		}
		return s, info
	}
	s1, info := score(filepath.Join(dir, "s1.safetensors"), "--head", "probe")
	s2, info2 := score(filepath.Join(dir, "s2.safetensors"), "--head", "probe")
	if info.Head != inject.HeadProbe || info.HeadSeeds != 1 || info.HeadValues == nil || info.HeadExamples != 160 {
		t.Fatalf("score file info %+v", info)
	}
	for name, a := range s1 {
		if !slices.Equal(a, s2[name]) {
			t.Fatalf("%s: the scores of two runs with the same seeds differ", name)
		}
	}
	if !slices.Equal(info.HeadValues.Weight, info2.HeadValues.Weight) || !slices.Equal(info.HeadValues.Bias, info2.HeadValues.Bias) {
		t.Fatal("the probe heads of two runs with the same seed differ")
	}
	f, err := safetensors.Read(filepath.Join(dir, "s1.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata["head"] != "probe" || f.Metadata["head_seeds"] != "1" {
		t.Errorf("score file metadata %v", f.Metadata)
	}
	// The probe is the default: no --head gives the same scores and head.
	s0, info0 := score(filepath.Join(dir, "s0.safetensors"))
	if info0.Head != inject.HeadProbe || info0.HeadValues == nil || !slices.Equal(info0.HeadValues.Weight, info.HeadValues.Weight) {
		t.Errorf("default head: info %+v, want the probe", info0)
	}
	for name, a := range s1 {
		if !slices.Equal(a, s0[name]) {
			t.Fatalf("%s: the default head's scores differ from --head probe's", name)
		}
	}
	// The paper's random head gives other scores and is recorded too; --head-seeds K
	// without --head averages K random heads.
	s3, info3 := score(filepath.Join(dir, "s3.safetensors"), "--head", "random")
	if info3.Head != inject.HeadRandom || info3.HeadValues != nil {
		t.Errorf("--head random: info %+v", info3)
	}
	if _, info4 := score(filepath.Join(dir, "s4.safetensors"), "--head-seeds", "2"); info4.Head != inject.HeadRandom || info4.HeadSeeds != 2 {
		t.Errorf("--head-seeds 2 alone: info %+v, want 2 random heads", info4)
	}
	if code, _, stderr := sptctl(t, "sensitivity", "--model", model, "--data", task, "--head", "probe", "--head-seeds", "2",
		"--out", filepath.Join(dir, "s5.safetensors")); code != 2 || !strings.Contains(stderr, "--head-seeds") {
		t.Errorf("--head probe --head-seeds 2: exit %d, %q; want a usage error", code, stderr)
	}
	same := true
	for name, a := range s1 {
		same = same && slices.Equal(a, s3[name])
	}
	if same {
		t.Error("probe and random heads gave the same scores")
	}

	// The plan carries the head; inject starts from it.
	plan := filepath.Join(dir, "plan.json")
	if code, _, stderr := sptctl(t, "allocate", "--model", model, "--scores", filepath.Join(dir, "s1.safetensors"), "--strategy", "linear", "--out", plan); code != 0 {
		t.Fatalf("allocate: %s", stderr)
	}
	p, err := inject.LoadPlan(plan)
	if err != nil {
		t.Fatal(err)
	}
	if p.Options.Scoring != inject.HeadProbe || p.Head.Init != inject.HeadProbe || p.Head.Values == nil ||
		!slices.Equal(p.Head.Values.Weight, info.HeadValues.Weight) || !slices.Equal(p.Head.Values.Bias, info.HeadValues.Bias) {
		t.Fatalf("plan options %+v, head init %q", p.Options, p.Head.Init)
	}
	tunable := filepath.Join(dir, "tunable.onnx")
	if code, _, stderr := sptctl(t, "inject", "--model", model, "--plan", plan, "--out", tunable); code != 0 {
		t.Fatalf("inject: %s", stderr)
	}
	m, err := onnxio.Load(tunable)
	if err != nil {
		t.Fatal(err)
	}
	var stored inject.Plan
	if ok, err := meta.Get(m, meta.KeyPlan, &stored); !ok || err != nil {
		t.Fatalf("injected model has no plan: %v", err)
	}
	inits := map[string][]float32{}
	for _, in := range m.Graph.Initializer {
		if v, err := onnxio.Floats(in); err == nil {
			inits[in.GetName()] = v
		}
	}
	classes, in := p.Head.Classes, p.Head.In
	for _, r := range stored.Injected {
		got := inits[r.Init]
		if r.Tuner != inject.KindHead {
			continue
		}
		switch r.Part {
		case inject.PartWeight: // stored [classes, in] or [in, classes]
			want := info.HeadValues.Weight
			if !slices.Equal(got, want) && !slices.Equal(got, transpose(want, classes, in)) {
				t.Errorf("injected head weight is not the probe's")
			}
		case inject.PartBias:
			if !slices.Equal(got, info.HeadValues.Bias) {
				t.Errorf("injected head bias %v, the probe's %v", got, info.HeadValues.Bias)
			}
		}
	}
	top1 := func(model string) float64 {
		t.Helper()
		code, out, stderr := sptctl(t, "eval", "--model", model, "--data", task, "--split", "test", "--json")
		if code != 0 {
			t.Fatalf("eval %s: %s", model, stderr)
		}
		var e struct{ Top1 float64 }
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatal(err)
		}
		return e.Top1
	}
	probe := top1(tunable)

	// --strategy linear, trained on the same split with the suite's schedule.
	run := filepath.Join(dir, "linear")
	code, stdout, stderr := sptctl(t, "tune", "--model", model, "--data", task, "--out", run, "--strategy", "linear",
		"--val-split", "", "--epochs", "10", "--warmup", "1", "--batch-size", "64", "--lr", "5e-3", "--seed", "4", "--json")
	if code != 0 {
		t.Fatalf("tune --strategy linear: exit %d\n%s", code, stderr)
	}
	var r tuneReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatal(err)
	}
	t.Logf("test top-1: probe head %.3f (train %.3f), --strategy linear %.3f (untrained %.3f)", probe, info.HeadTop1, r.After, r.Before)
	if probe < r.After {
		t.Errorf("the probe head scores %.3f on the test split, --strategy linear %.3f", probe, r.After)
	}
	if probe < r.Before+0.15 {
		t.Errorf("the probe head scores %.3f, an untrained head %.3f", probe, r.Before)
	}
}

// transpose returns the [cols, rows] transpose of a row-major [rows, cols] matrix.
func transpose(a []float32, rows, cols int) []float32 {
	out := make([]float32, len(a))
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			out[j*rows+i] = a[i*cols+j]
		}
	}
	return out
}

// TestTuneBaselineHead: `tune --strategy lora-qv --head probe` starts LoRA-qv from the
// head SPT would start from (the plan holds the very head `sensitivity --head probe`
// fits with the same seeds, and the untrained model classifies the test split clearly
// better than a fresh head); without --head a baseline starts from a fresh head, as
// before the probe became sensitivity's default.
func TestTuneBaselineHead(t *testing.T) {
	const model = "../../testdata/tv_op17_alias.onnx"
	dir := t.TempDir()
	task := filepath.Join(dir, "task")
	if err := data.FewShot(data.FewShotOptions{From: fashionMNIST, Classes: []int{0, 1, 2, 3, 4}, Train: 160, Val: 40, Test: 100, Seed: 5, Out: task}); err != nil {
		t.Fatal(err)
	}
	tuneQV := func(name string, args ...string) (tuneReport, *inject.Plan) {
		t.Helper()
		out := filepath.Join(dir, name)
		code, stdout, stderr := sptctl(t, append([]string{"tune", "--model", model, "--data", task, "--out", out, "--strategy", "lora-qv",
			"--val-split", "", "--epochs", "1", "--warmup", "0", "--batch-size", "64", "--seed", "4", "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("tune %s: exit %d\n%s", name, code, stderr)
		}
		var r tuneReport
		if err := json.Unmarshal([]byte(stdout), &r); err != nil {
			t.Fatal(err)
		}
		p, err := inject.LoadPlan(filepath.Join(out, "plan.json"))
		if err != nil {
			t.Fatal(err)
		}
		return r, p
	}
	probe, pp := tuneQV("probe", "--head", "probe")
	fresh, fp := tuneQV("default")
	random, rp := tuneQV("random", "--head", "random")

	// The oracle: the head the sensitivity command fits with the same seeds and batches.
	scores := filepath.Join(dir, "s.safetensors")
	if code, _, stderr := sptctl(t, "sensitivity", "--model", model, "--data", task, "--batches", "1", "--batch-size", "32",
		"--seed", "4", "--head-seed", "4", "--head", "probe", "--out", scores); code != 0 {
		t.Fatalf("sensitivity: %s", stderr)
	}
	_, info, err := sensitivity.Read(scores)
	if err != nil {
		t.Fatal(err)
	}
	if pp.Options.Strategy != string(inject.LoRAQV) || pp.Head.Init != inject.HeadProbe || pp.Head.Values == nil ||
		!slices.Equal(pp.Head.Values.Weight, info.HeadValues.Weight) || !slices.Equal(pp.Head.Values.Bias, info.HeadValues.Bias) {
		t.Fatalf("--head probe: plan options %+v, head init %q: not sensitivity's probe", pp.Options, pp.Head.Init)
	}
	for name, p := range map[string]*inject.Plan{"no --head": fp, "--head random": rp} {
		if p.Head.Init != "" || p.Head.Values != nil || p.Options.Scoring != "" {
			t.Errorf("%s: plan head init %q, scoring %q: want a fresh head", name, p.Head.Init, p.Options.Scoring)
		}
	}
	if probe.Trainable != fresh.Trainable || random.Before != fresh.Before {
		t.Errorf("trainable %d vs %d; top-1 before: --head random %.3f, no --head %.3f: the head's start must change nothing else",
			probe.Trainable, fresh.Trainable, random.Before, fresh.Before)
	}
	t.Logf("test top-1 before training: probe head %.3f (%.3f on its own images), fresh head %.3f", probe.Before, info.HeadTop1, fresh.Before)
	if probe.Before < fresh.Before+0.15 || probe.Before < 0.5 {
		t.Errorf("untrained LoRA-qv from the probe head scores %.3f, from a fresh head %.3f (chance 0.2)", probe.Before, fresh.Before)
	}
}
