package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/onnxio"
)

// check refuses settings that cannot train: non-positive epochs or batch size, a
// learning rate that is not a positive finite number, a minimum learning rate or a
// weight decay that is negative or not finite, negative warm-up or validation periods.
func (c Config) check() error {
	if c.Epochs <= 0 || c.BatchSize <= 0 {
		return fmt.Errorf("train: epochs and batch size must be positive (got %d, %d)", c.Epochs, c.BatchSize)
	}
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case !finite(c.LR) || c.LR <= 0:
		return fmt.Errorf("train: learning rate %v: want a positive finite number", c.LR)
	case !finite(c.MinLR) || c.MinLR < 0:
		return fmt.Errorf("train: minimum learning rate %v: want a finite number ≥ 0", c.MinLR)
	case !finite(c.WeightDecay) || c.WeightDecay < 0:
		return fmt.Errorf("train: weight decay %v: want a finite number ≥ 0", c.WeightDecay)
	case c.WarmupEpochs < 0 || c.ValEvery < 0:
		return fmt.Errorf("train: warm-up and validation periods must not be negative (got %d, %d)", c.WarmupEpochs, c.ValEvery)
	}
	return nil
}

// errNotFinite marks a step whose loss is NaN or infinite; Fit stops on it before the
// optimizer applies the step, so the parameters stay the last good ones.
var errNotFinite = errors.New("not finite")

func finite32(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

// checkParams returns an error naming the first trainable parameter holding a NaN or
// an infinity. It runs on the executor's goroutine (inside e.Do).
func checkParams(p engine.Program, names []string) error {
	for _, n := range names {
		v, err := p.Floats(n)
		if err != nil {
			return err
		}
		if i := finite32(v); i >= 0 {
			return fmt.Errorf("parameter %q entry %d is %v", n, i, v[i])
		}
	}
	return nil
}

// stopped is the one-line error Fit returns when training diverged: what diverged,
// and what was kept.
func (r *fitRun) stopped(epoch, batch int, what string) error {
	kept := "no checkpoint was written"
	if r.cfg.Checkpoint != "" {
		kept = fmt.Sprintf("checkpoint %s keeps the last good state", r.cfg.Checkpoint)
	}
	return fmt.Errorf("train: epoch %d batch %d: %s; training stopped, no model written (%s; try a lower learning rate)", epoch+1, batch+1, what, kept)
}

// checkBase refuses a checkpoint made from another base model: base is the checkpoint's
// recorded base fingerprint, want the run's (Config.Base).
func checkBase(path, base, want string) error {
	if want == "" {
		return nil
	}
	if base == "" {
		return fmt.Errorf("resume: %s records no base model (an older sptctl wrote it); train again without --resume", path)
	}
	if base != want {
		return fmt.Errorf("resume: %s was made from another base model (%s, this model's base is %s)", path, onnxio.ShortFingerprint(base), onnxio.ShortFingerprint(want))
	}
	return nil
}
