package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/internal/meta"
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
	// Base is the fingerprint of the base model the trained model was injected into
	// (meta.KeyBaseFingerprint). Checkpoints record it; resuming from a checkpoint of
	// another base is refused. Empty: not recorded nor checked.
	Base string
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
// cosine schedule with linear warm-up, one optimizer step per batch. It runs the
// executor's work through e. The data order is a function of (Seed, epoch) and
// dropout is re-seeded from (Seed, step) before every step, so a run resumed from a
// checkpoint reaches the same weights as one that was never interrupted.
func Fit(ctx context.Context, e engine.Engine, p engine.Program, trainSplit, valSplit *data.Split, pre meta.Preprocess, cfg Config, report func(Event)) (*Result, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if trainSplit.Len() == 0 {
		return nil, errors.New("train: the training split is empty")
	}
	r := newFitRun(ctx, e, p, trainSplit, valSplit, pre, cfg, report)
	startEpoch, startBatch := 0, 0
	if cfg.Resume {
		var err error
		if startEpoch, startBatch, err = r.resume(); err != nil {
			return nil, err
		}
		r.res.Resumed = true
		if startEpoch >= cfg.Epochs {
			r.res.Steps = r.opt.Step
			return r.res, nil
		}
	}
	start := time.Now()
	for epoch := startEpoch; epoch < cfg.Epochs; epoch++ {
		first := 0
		if epoch == startEpoch {
			first = startBatch
		}
		if err := r.epoch(epoch, first); err != nil {
			if errors.Is(err, ErrInterrupted) {
				return r.res, err
			}
			return nil, err
		}
	}
	r.res.Steps = r.opt.Step
	r.res.Seconds = time.Since(start).Seconds()
	return r.res, nil
}

// fitRun is one Fit call's state.
type fitRun struct {
	ctx                     context.Context
	e                       engine.Engine
	p                       engine.Program
	val                     *data.Split
	pre                     meta.Preprocess
	cfg                     Config
	report                  func(Event)
	loader                  *data.Loader
	perEpoch, total, warmup int
	names                   []string
	shapes                  map[string][]int64
	opt                     *AdamW
	res                     *Result
}

func newFitRun(ctx context.Context, e engine.Engine, p engine.Program, trainSplit, valSplit *data.Split, pre meta.Preprocess, cfg Config, report func(Event)) *fitRun {
	r := &fitRun{ctx: ctx, e: e, p: p, val: valSplit, pre: pre, cfg: cfg, report: report,
		loader: data.NewLoader(trainSplit, pre, cfg.BatchSize, true, cfg.Seed, cfg.Workers),
		names:  p.Trainable(), shapes: map[string][]int64{}, opt: NewAdamW(cfg.WeightDecay), res: &Result{ValTop1: -1}}
	r.perEpoch = r.loader.NumBatches()
	r.total = r.perEpoch * cfg.Epochs
	r.warmup = r.perEpoch * cfg.WarmupEpochs
	if r.warmup >= r.total {
		r.warmup = r.total / 10
	}
	for _, n := range r.names {
		s, _ := p.ParamShape(n)
		r.shapes[n] = s
	}
	return r
}

// resume loads the checkpoint into the Program and the optimizer and returns where
// the interrupted run stopped.
func (r *fitRun) resume() (epoch, batch int, err error) {
	cfg := r.cfg
	ck, err := readCheckpoint(cfg.Checkpoint, r.names, r.shapes)
	if err != nil {
		return 0, 0, err
	}
	if err := checkBase(cfg.Checkpoint, ck.base, cfg.Base); err != nil {
		return 0, 0, err
	}
	if ck.settings != cfg.fingerprint(r.perEpoch) {
		return 0, 0, fmt.Errorf("resume %s: the checkpoint was made with other settings (%s); resume with the same flags", cfg.Checkpoint, ck.settings)
	}
	if err := r.e.Do(func() error {
		for n, v := range ck.params {
			if err := r.p.SetFloats(n, v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return 0, 0, err
	}
	r.opt.M, r.opt.V, r.opt.Step = ck.m, ck.v, ck.step
	return ck.epoch, ck.batch, nil
}

func (r *fitRun) save(epoch, batch int) error {
	if r.cfg.Checkpoint == "" {
		return nil
	}
	return writeCheckpoint(r.cfg.Checkpoint, r.e, r.p, r.opt, r.names, r.shapes, epoch, batch, r.cfg.fingerprint(r.perEpoch), r.cfg.Base)
}

// interrupted saves a checkpoint at (epoch, batch) and returns ErrInterrupted.
func (r *fitRun) interrupted(epoch, batch int) error {
	if err := r.save(epoch, batch); err != nil {
		return err
	}
	return ErrInterrupted
}

// epoch trains one epoch from its batch first on, validates when due and saves a
// checkpoint; it returns ErrInterrupted (checkpoint saved) when the context ends.
func (r *fitRun) epoch(epoch, first int) error {
	cfg, res := r.cfg, r.res
	it := r.loader.Epoch(r.ctx, epoch, first)
	defer it.Close()
	seen, correct := 0, 0
	var lossSum, lr float64
	epochStart := time.Now()
	for b := first; ; b++ {
		batch, ok, err := it.Next()
		if err != nil {
			if r.ctx.Err() != nil {
				return r.interrupted(epoch, b)
			}
			return err
		}
		if !ok {
			break
		}
		lr = CosineLR(cfg.LR, cfg.MinLR, r.opt.Step, r.warmup, r.total)
		var step *engine.StepResult
		err = r.e.Do(func() error {
			if err := r.e.SetSeed(dropoutSeed(cfg.Seed, r.opt.Step)); err != nil {
				return err
			}
			var err error
			if step, err = Step(r.p, batch.Images, batch.Labels, batch.N); err != nil {
				return err
			}
			if math.IsNaN(step.Loss) || math.IsInf(step.Loss, 0) {
				return errNotFinite // before the step is applied: the parameters stay good
			}
			return r.opt.Apply(r.p, lr)
		})
		if errors.Is(err, errNotFinite) {
			return r.stopped(epoch, b, fmt.Sprintf("the loss is %v", step.Loss))
		}
		if err != nil {
			return fmt.Errorf("train: epoch %d batch %d: %w", epoch+1, b+1, err)
		}
		res.MicroBatched = res.MicroBatched || step.MicroBatched
		seen += batch.N
		correct += step.Correct
		lossSum += step.Loss * float64(batch.N)
		res.FinalLoss = step.Loss
		if r.report != nil {
			r.report(Event{Epoch: epoch + 1, Epochs: cfg.Epochs, Step: r.opt.Step, Steps: r.total, Batch: b + 1, Batches: r.perEpoch,
				Loss: step.Loss, Accuracy: float64(correct) / float64(seen), LR: lr,
				ImagesPerSecond: float64(seen) / time.Since(epochStart).Seconds()})
		}
		if r.ctx.Err() != nil { // finish the step, then stop
			return r.interrupted(epoch, b+1)
		}
	}
	it.Close()
	// A step can make a parameter infinite with a finite loss; nothing of such a state
	// is kept (the last checkpoint is not overwritten).
	if err := r.e.Do(func() error { return checkParams(r.p, r.names) }); err != nil {
		return r.stopped(epoch, r.perEpoch-1, err.Error())
	}
	if seen > 0 {
		res.TrainTop1 = float64(correct) / float64(seen)
	}
	last := epoch == cfg.Epochs-1
	if r.val != nil && r.val.Len() > 0 && (last || (cfg.ValEvery > 0 && (epoch+1)%cfg.ValEvery == 0)) {
		acc, err := Evaluate(r.ctx, r.e, r.p, r.val, r.pre, cfg.BatchSize, cfg.Workers)
		if err != nil {
			return err
		}
		res.ValTop1 = acc
		if r.report != nil {
			r.report(Event{Epoch: epoch + 1, Epochs: cfg.Epochs, Step: r.opt.Step, Steps: r.total, Batch: r.perEpoch, Batches: r.perEpoch,
				Loss: lossSum / float64(max(seen, 1)), Accuracy: res.TrainTop1, LR: lr, Val: &acc})
		}
	}
	return r.save(epoch+1, 0)
}

// Evaluate returns the top-1 accuracy of p (eval mode) on a split.
func Evaluate(ctx context.Context, e engine.Engine, p engine.Program, split *data.Split, pre meta.Preprocess, batchSize, workers int) (float64, error) {
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
		var step *engine.StepResult
		if err := e.Do(func() error {
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
