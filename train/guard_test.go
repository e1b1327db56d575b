package train

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/inject"
)

// Settings that cannot train are refused before anything runs (no program or data is
// touched: they are nil here).
func TestFitRefusesBadSettings(t *testing.T) {
	good := Config{Epochs: 1, BatchSize: 4, LR: 1e-3}
	for _, c := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.LR = math.NaN() }, "learning rate NaN"},
		{func(c *Config) { c.LR = math.Inf(1) }, "learning rate +Inf"},
		{func(c *Config) { c.LR = -1e-3 }, "learning rate -0.001"},
		{func(c *Config) { c.LR = 0 }, "learning rate 0"},
		{func(c *Config) { c.MinLR = math.NaN() }, "minimum learning rate NaN"},
		{func(c *Config) { c.WeightDecay = math.NaN() }, "weight decay NaN"},
		{func(c *Config) { c.WeightDecay = -1 }, "weight decay -1"},
		{func(c *Config) { c.WarmupEpochs = -1 }, "warm-up"},
		{func(c *Config) { c.Epochs = 0 }, "epochs"},
	} {
		cfg := good
		c.edit(&cfg)
		_, err := Fit(context.Background(), nil, nil, nil, nil, data.DefaultPreprocess(1, 2, 2), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
}

// A learning rate that makes training diverge stops Fit with one line; the step that
// gave a NaN loss is not applied, and the checkpoint of the last good state is not
// overwritten.
func TestFitStopsOnDivergence(t *testing.T) {
	w := torch.NewWorker()
	defer w.Close()
	p, ds := fitSetup(t, w, "tv_op17_alias", inject.LoRAQV)
	ck := filepath.Join(t.TempDir(), "ck.safetensors")
	good := []byte("the last good checkpoint")
	os.WriteFile(ck, good, 0o644)
	cfg := Config{Epochs: 2, BatchSize: 16, LR: 1e30, Seed: 1, Checkpoint: ck}
	_, err := Fit(context.Background(), w, p, split(t, ds, "train"), nil, data.DefaultPreprocess(1, 28, 28), cfg, nil)
	if err == nil {
		t.Fatal("a diverging run succeeded")
	}
	msg := err.Error()
	if !strings.Contains(msg, "training stopped") || !strings.Contains(msg, ck) || strings.Contains(msg, "\n") ||
		!(strings.Contains(msg, "the loss is") || strings.Contains(msg, "parameter")) {
		t.Fatalf("error %q: want one line saying what diverged and naming the checkpoint", msg)
	}
	if b, _ := os.ReadFile(ck); !bytes.Equal(b, good) {
		t.Error("the checkpoint was overwritten by a diverged run")
	}
	if strings.Contains(msg, "the loss is") {
		if err := w.Do(func() error { return checkParams(p, p.Trainable()) }); err != nil {
			t.Errorf("the step with a NaN loss was applied: %v", err)
		}
	}
}

// A checkpoint records the base model's fingerprint; resuming on another base (or
// from a checkpoint that records none) is refused.
func TestResumeRefusesAnotherBase(t *testing.T) {
	w := torch.NewWorker()
	defer w.Close()
	p, ds := fitSetup(t, w, "tv_op17_alias", inject.LoRAQV)
	pre := data.DefaultPreprocess(1, 28, 28)
	ck := filepath.Join(t.TempDir(), "ck.safetensors")
	cfg := Config{Epochs: 1, BatchSize: 64, LR: 1e-3, Seed: 1, Checkpoint: ck, Base: "sha256:aaaa"}
	if _, err := Fit(context.Background(), w, p, split(t, ds, "train"), nil, pre, cfg, nil); err != nil {
		t.Fatal(err)
	}
	cfg.Resume = true
	if _, err := Fit(context.Background(), w, p, split(t, ds, "train"), nil, pre, cfg, nil); err != nil {
		t.Fatalf("resume on the same base: %v", err)
	}
	cfg.Base = "sha256:bbbb"
	if _, err := Fit(context.Background(), w, p, split(t, ds, "train"), nil, pre, cfg, nil); err == nil || !strings.Contains(err.Error(), "another base model") {
		t.Fatalf("resume on another base: %v", err)
	}
	// A checkpoint without a base (written before bases were recorded) is refused
	// when the run knows its base.
	cfg.Base, cfg.Resume = "", false
	if _, err := Fit(context.Background(), w, p, split(t, ds, "train"), nil, pre, cfg, nil); err != nil {
		t.Fatal(err)
	}
	cfg.Base, cfg.Resume = "sha256:aaaa", true
	if _, err := Fit(context.Background(), w, p, split(t, ds, "train"), nil, pre, cfg, nil); err == nil || !strings.Contains(err.Error(), "records no base model") {
		t.Fatalf("resume from a checkpoint without a base: %v", err)
	}
}
