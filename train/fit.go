package train

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/safetensors"
)

// Config is a training run's settings.
type Config struct {
	Epochs       int
	BatchSize    int
	LR           float64
	MinLR        float64
	WeightDecay  float64
	WarmupEpochs int
	Seed         int64
	ValEvery     int    // validate every N epochs (0: only after the last)
	Checkpoint   string // checkpoint file, written atomically after every epoch and on interrupt
	Resume       bool   // continue from Checkpoint
	Workers      int    // image decoders (0: one per CPU)
}

// Event reports training progress.
type Event struct {
	Epoch, Epochs   int
	Step, Steps     int // optimizer steps done / in all
	Batch, Batches  int // within the epoch
	Loss            float64
	Accuracy        float64 // of the epoch so far
	ImagesPerSecond float64
	LR              float64
	Val             *float64 // validation top-1, when just measured
}

// Result is what Fit did.
type Result struct {
	Steps        int
	FinalLoss    float64
	TrainTop1    float64 // of the last epoch
	ValTop1      float64 // last validation (-1 if none)
	MicroBatched bool
	Seconds      float64
	Resumed      bool
}

// ErrInterrupted is returned by Fit when its context was cancelled; the checkpoint
// holds everything needed to resume.
var ErrInterrupted = errors.New("training interrupted")

// Fit trains the Program's trainable initializers on the train split with AdamW and a
// cosine schedule with linear warm-up, one optimizer step per batch. It runs torch work
// on w. The data order is a function of (Seed, epoch) and dropout is re-seeded from
// (Seed, step) before every step, so a run resumed from a checkpoint reaches the same
// weights as one that was never interrupted.
func Fit(ctx context.Context, w *Worker, p *Program, trainSplit, valSplit *data.Split, pre meta.Preprocess, cfg Config, report func(Event)) (*Result, error) {
	if cfg.Epochs <= 0 || cfg.BatchSize <= 0 {
		return nil, fmt.Errorf("train: epochs and batch size must be positive (got %d, %d)", cfg.Epochs, cfg.BatchSize)
	}
	if trainSplit.Len() == 0 {
		return nil, errors.New("train: the training split is empty")
	}
	loader := data.NewLoader(trainSplit, pre, cfg.BatchSize, true, cfg.Seed, cfg.Workers)
	perEpoch := loader.NumBatches()
	total := perEpoch * cfg.Epochs
	warmup := perEpoch * cfg.WarmupEpochs
	if warmup >= total {
		warmup = total / 10
	}
	names := p.Trainable()
	shapes := map[string][]int64{}
	for _, n := range names {
		s, _ := p.ParamShape(n)
		shapes[n] = s
	}
	opt := NewAdamW(cfg.WeightDecay)
	res := &Result{ValTop1: -1}
	startEpoch, startBatch := 0, 0
	if cfg.Resume {
		ck, err := readCheckpoint(cfg.Checkpoint, names, shapes)
		if err != nil {
			return nil, err
		}
		if ck.settings != cfg.fingerprint(perEpoch) {
			return nil, fmt.Errorf("resume %s: the checkpoint was made with other settings (%s); resume with the same flags", cfg.Checkpoint, ck.settings)
		}
		if err := w.Do(func() error {
			for n, v := range ck.params {
				if err := p.SetFloats(n, v); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, err
		}
		opt.M, opt.V, opt.Step = ck.m, ck.v, ck.step
		startEpoch, startBatch = ck.epoch, ck.batch
		res.Resumed = true
		if startEpoch >= cfg.Epochs {
			res.Steps = opt.Step
			return res, nil
		}
	}
	start := time.Now()
	save := func(epoch, batch int) error {
		if cfg.Checkpoint == "" {
			return nil
		}
		return writeCheckpoint(cfg.Checkpoint, w, p, opt, names, shapes, epoch, batch, cfg.fingerprint(perEpoch))
	}
	for epoch := startEpoch; epoch < cfg.Epochs; epoch++ {
		first := 0
		if epoch == startEpoch {
			first = startBatch
		}
		it := loader.Epoch(ctx, epoch, first)
		seen, correct := 0, 0
		var lossSum, lr float64
		epochStart := time.Now()
		for b := first; ; b++ {
			batch, ok, err := it.Next()
			if err != nil {
				it.Close()
				if ctx.Err() != nil {
					if err := save(epoch, b); err != nil {
						return nil, err
					}
					return res, ErrInterrupted
				}
				return nil, err
			}
			if !ok {
				break
			}
			lr = CosineLR(cfg.LR, cfg.MinLR, opt.Step, warmup, total)
			var step *StepResult
			err = w.Do(func() error {
				if err := SetSeed(uint64(cfg.Seed)*1_000_003 + uint64(opt.Step)); err != nil {
					return err
				}
				if err := p.ZeroGrad(); err != nil {
					return err
				}
				var err error
				if step, err = p.ForwardBackward(batch.Images, batch.Labels, batch.N); err != nil {
					return err
				}
				opt.Begin()
				for _, n := range names {
					g, err := p.Grad(n)
					if err != nil {
						return err
					}
					v, err := p.Floats(n)
					if err != nil {
						return err
					}
					opt.Update(n, shapes[n], v, g, lr)
					if err := p.SetFloats(n, v); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				it.Close()
				return nil, fmt.Errorf("train: epoch %d batch %d: %w", epoch+1, b+1, err)
			}
			res.MicroBatched = res.MicroBatched || step.MicroBatched
			seen += batch.N
			correct += step.Correct
			lossSum += step.Loss * float64(batch.N)
			res.FinalLoss = step.Loss
			if report != nil {
				report(Event{Epoch: epoch + 1, Epochs: cfg.Epochs, Step: opt.Step, Steps: total, Batch: b + 1, Batches: perEpoch,
					Loss: step.Loss, Accuracy: float64(correct) / float64(seen), LR: lr,
					ImagesPerSecond: float64(seen) / time.Since(epochStart).Seconds()})
			}
			if ctx.Err() != nil { // finish the step, then stop
				it.Close()
				if err := save(epoch, b+1); err != nil {
					return nil, err
				}
				return res, ErrInterrupted
			}
		}
		it.Close()
		if seen > 0 {
			res.TrainTop1 = float64(correct) / float64(seen)
		}
		last := epoch == cfg.Epochs-1
		if valSplit != nil && valSplit.Len() > 0 && (last || (cfg.ValEvery > 0 && (epoch+1)%cfg.ValEvery == 0)) {
			acc, err := Evaluate(ctx, w, p, valSplit, pre, cfg.BatchSize, cfg.Workers)
			if err != nil {
				return nil, err
			}
			res.ValTop1 = acc
			if report != nil {
				report(Event{Epoch: epoch + 1, Epochs: cfg.Epochs, Step: opt.Step, Steps: total, Batch: perEpoch, Batches: perEpoch,
					Loss: lossSum / float64(max(seen, 1)), Accuracy: res.TrainTop1, LR: lr, Val: &acc})
			}
		}
		if err := save(epoch+1, 0); err != nil {
			return nil, err
		}
	}
	res.Steps = opt.Step
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// Evaluate returns the top-1 accuracy of p (eval mode) on a split.
func Evaluate(ctx context.Context, w *Worker, p *Program, split *data.Split, pre meta.Preprocess, batchSize, workers int) (float64, error) {
	loader := data.NewLoader(split, pre, batchSize, false, 0, workers)
	it := loader.Epoch(ctx, 0, 0)
	defer it.Close()
	seen, correct := 0, 0
	for {
		batch, ok, err := it.Next()
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		var step *StepResult
		if err := w.Do(func() error {
			var err error
			step, err = p.Forward(batch.Images, batch.Labels, batch.N)
			return err
		}); err != nil {
			return 0, fmt.Errorf("evaluate %s: %w", split.SplitName(), err)
		}
		seen += batch.N
		correct += step.Correct
	}
	if seen == 0 {
		return 0, fmt.Errorf("evaluate: split %s is empty", split.SplitName())
	}
	return float64(correct) / float64(seen), nil
}

// fingerprint summarises the settings a checkpoint is only valid for.
func (c Config) fingerprint(perEpoch int) string {
	return fmt.Sprintf("epochs=%d batch=%d lr=%g minlr=%g wd=%g warmup=%d seed=%d batches/epoch=%d",
		c.Epochs, c.BatchSize, c.LR, c.MinLR, c.WeightDecay, c.WarmupEpochs, c.Seed, perEpoch)
}

type checkpoint struct {
	params, m, v map[string][]float32
	step         int
	epoch, batch int
	settings     string
}

func writeCheckpoint(path string, w *Worker, p *Program, opt *AdamW, names []string, shapes map[string][]int64, epoch, batch int, settings string) error {
	f := &safetensors.File{Tensors: map[string]safetensors.Tensor{}, Metadata: map[string]string{
		"format": "sptctl-checkpoint-1", "step": strconv.Itoa(opt.Step), "epoch": strconv.Itoa(epoch),
		"batch": strconv.Itoa(batch), "settings": settings,
	}}
	err := w.Do(func() error {
		for _, n := range names {
			v, err := p.Floats(n)
			if err != nil {
				return err
			}
			f.Tensors["param/"+n] = safetensors.Tensor{Shape: shapes[n], Data: v}
			if m := opt.M[n]; m != nil {
				f.Tensors["adam_m/"+n] = safetensors.Tensor{Shape: shapes[n], Data: m}
				f.Tensors["adam_v/"+n] = safetensors.Tensor{Shape: shapes[n], Data: opt.V[n]}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return safetensors.Write(path, f)
}

func readCheckpoint(path string, names []string, shapes map[string][]int64) (*checkpoint, error) {
	if path == "" {
		return nil, errors.New("resume: no checkpoint file given")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	f, err := safetensors.Read(path)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	md := f.Metadata
	if md["format"] != "sptctl-checkpoint-1" {
		return nil, fmt.Errorf("resume: %s is not an sptctl checkpoint", path)
	}
	ck := &checkpoint{params: map[string][]float32{}, m: map[string][]float32{}, v: map[string][]float32{}, settings: md["settings"]}
	for key, dst := range map[string]*int{"step": &ck.step, "epoch": &ck.epoch, "batch": &ck.batch} {
		if *dst, err = strconv.Atoi(md[key]); err != nil {
			return nil, fmt.Errorf("resume: %s: bad %s %q", path, key, md[key])
		}
	}
	for _, n := range names {
		t, ok := f.Tensors["param/"+n]
		if !ok || len(t.Data) != numel(shapes[n]) {
			return nil, fmt.Errorf("resume: %s has no (or a wrongly sized) tensor for %q; was it made for this model?", path, n)
		}
		ck.params[n] = t.Data
		if m, ok := f.Tensors["adam_m/"+n]; ok {
			ck.m[n], ck.v[n] = m.Data, f.Tensors["adam_v/"+n].Data
		}
	}
	return ck, nil
}

func numel(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}
