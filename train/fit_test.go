package train

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/meta"
)

// fitSetup carves a 5-class Fashion-MNIST task and injects a LoRA plan into a 1-channel
// 28×28 fixture; it returns the compiled program and the task's splits.
func fitSetup(t *testing.T, w *torch.Worker, fx string, strategy inject.Strategy) (engine.Program, *data.Dataset) {
	t.Helper()
	ds := fixture.OpenFewShot(t, data.FewShotOptions{Classes: []int{0, 1, 2, 3, 4}, Train: 120, Val: 60, Test: 60, Seed: 1,
		Out: filepath.Join(t.TempDir(), "task")})
	f := fixture.Load(t, fixture.Path(t, fx))
	m := f.M
	opt := inject.DefaultOptions()
	opt.Strategy, opt.Classes = strategy, 5
	plan, err := inject.Allocate(f.V, f.G, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := inject.Apply(m, plan, inject.ApplyOptions{Dropout: 0.1}); err != nil {
		t.Fatal(err)
	}
	names, err := meta.Trainable(m)
	if err != nil {
		t.Fatal(err)
	}
	var p engine.Program
	if err := w.Do(func() error {
		var err error
		p, err = w.Compile(m, engine.Options{Trainable: names})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Do(func() error { p.Close(); return nil }) })
	return p, ds
}

func split(t *testing.T, ds *data.Dataset, name string) *data.Split {
	s, err := ds.Split(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFitLearnsTheTask(t *testing.T) {
	w := torch.NewWorker()
	defer w.Close()
	for _, fx := range []string{"tv_op17_alias", "tv_op14_static"} { // dynamic batch; static batch 2 (micro-batched)
		p, ds := fitSetup(t, w, fx, inject.Uniform)
		pre := data.DefaultPreprocess(1, 28, 28)
		ctx := context.Background()
		before, err := Evaluate(ctx, w, p, split(t, ds, "test"), pre, 32, 0)
		if err != nil {
			t.Fatal(err)
		}
		res, err := Fit(ctx, w, p, split(t, ds, "train"), split(t, ds, "val"), pre,
			Config{Epochs: 6, BatchSize: 16, LR: 5e-3, WeightDecay: 1e-4, WarmupEpochs: 1, Seed: 3}, nil)
		if err != nil {
			t.Fatal(err)
		}
		after, err := Evaluate(ctx, w, p, split(t, ds, "test"), pre, 32, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: test top-1 %.3f untrained, %.3f after %d steps (val %.3f, micro-batched %v)", fx, before, after, res.Steps, res.ValTop1, res.MicroBatched)
		if after < before+0.2 || after < 0.4 { // chance is 0.2
			t.Errorf("%s: test top-1 %.3f after training, %.3f before: not clearly better", fx, after, before)
		}
		if fx == "tv_op14_static" && !res.MicroBatched {
			t.Error("a batch-2 model trained with batch 16 should have run micro-batches")
		}
	}
}

// TestResumeEquivalence interrupts a run, resumes it from its checkpoint and expects
// the weights of an uninterrupted run.
func TestResumeEquivalence(t *testing.T) {
	w := torch.NewWorker()
	defer w.Close()
	pre := data.DefaultPreprocess(1, 28, 28)
	cfg := Config{Epochs: 4, BatchSize: 16, LR: 3e-3, WeightDecay: 1e-4, WarmupEpochs: 1, Seed: 9}
	weights := func(p engine.Program) map[string][]float32 {
		out := map[string][]float32{}
		w.Do(func() error {
			for _, n := range p.Trainable() {
				out[n], _ = p.Floats(n)
			}
			return nil
		})
		return out
	}
	straight, ds := fitSetup(t, w, "tv_op17_alias", inject.LoRAQV)
	if _, err := Fit(context.Background(), w, straight, split(t, ds, "train"), nil, pre, cfg, nil); err != nil {
		t.Fatal(err)
	}
	want := weights(straight)

	resumed, _ := fitSetup(t, w, "tv_op17_alias", inject.LoRAQV)
	cfg.Checkpoint = filepath.Join(t.TempDir(), "ck.safetensors")
	ctx, cancel := context.WithCancel(context.Background())
	stopAt := 11 // mid-epoch (8 batches an epoch)
	_, err := Fit(ctx, w, resumed, split(t, ds, "train"), nil, pre, cfg, func(e Event) {
		if e.Step == stopAt {
			cancel()
		}
	})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run returned %v, want ErrInterrupted", err)
	}
	// A fresh program, as after a restart: only the checkpoint carries the state.
	fresh, _ := fitSetup(t, w, "tv_op17_alias", inject.LoRAQV)
	cfg.Resume = true
	res, err := Fit(context.Background(), w, fresh, split(t, ds, "train"), nil, pre, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.Steps != 32 {
		t.Errorf("resumed run: %+v", res)
	}
	got := weights(fresh)
	worst := 0.0
	for n, v := range want {
		for i := range v {
			worst = math.Max(worst, math.Abs(float64(v[i]-got[n][i])))
		}
	}
	t.Logf("max |straight - resumed| = %g over %d tensors", worst, len(want))
	if worst > 1e-6 {
		t.Errorf("resumed weights differ from the uninterrupted run's by %g", worst)
	}
	cfg.Epochs = 5 // other settings: refused
	if _, err := Fit(context.Background(), w, fresh, split(t, ds, "train"), nil, pre, cfg, nil); err == nil {
		t.Error("resume with other settings was accepted")
	}
}
