package sensitivity

import (
	"context"
	"errors"
	"fmt"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
	"github.com/sptctl/sptctl/train"

	"github.com/sugarme/gotch/ts"
)

// Options control Compute.
type Options struct {
	Batches   int   // batches of the split to accumulate (16 in the reference)
	BatchSize int   // images per batch (32 in the reference)
	Classes   int   // the task's classes: the size of the fresh head the gradients flow through
	HeadSeed  int64 // seed of that head (inject reuses it)
	Seed      int64 // seed of the batch order
	Workers   int   // image decoders (0: one per CPU)
}

// Compute scores the sensitivity of every weight of m's transformer blocks for a task:
// with a fresh, seeded head for the task's classes (a zero or foreign head would make
// every gradient zero or meaningless), the model in train mode, it accumulates the
// squared gradient of the cross-entropy loss over the first Batches batches of split.
// Patch and position embeddings, the class token and the head are not scored. m is
// changed (its head replaced); load it anew to use the base model afterwards.
// progress, if not nil, is called after each batch.
func Compute(ctx context.Context, w *train.Worker, m *onnxpb.ModelProto, split *data.Split, pre meta.Preprocess, opt Options, progress func(done, total int)) (Scores, Info, error) {
	if opt.Batches <= 0 || opt.BatchSize <= 0 {
		return nil, Info{}, fmt.Errorf("sensitivity: batches and batch size must be positive (got %d, %d)", opt.Batches, opt.BatchSize)
	}
	if opt.Classes < 2 {
		return nil, Info{}, fmt.Errorf("sensitivity: the task needs at least 2 classes, got %d", opt.Classes)
	}
	fp, err := onnxio.Fingerprint(m.GetGraph())
	if err != nil {
		return nil, Info{}, err
	}
	g := surgery.New(m)
	v, err := surgery.FindViT(g)
	if err != nil {
		return nil, Info{}, err
	}
	targets := scoredInitializers(v)
	// A head for the task (the plan of the "linear" strategy: the head alone).
	plan, err := inject.Allocate(v, g, nil, inject.Options{Strategy: inject.Linear, Type: inject.LoRA, Rank: 1, Alpha: 1, Beta: 1, Classes: opt.Classes, HeadSeed: opt.HeadSeed})
	if err != nil {
		return nil, Info{}, fmt.Errorf("sensitivity: %w", err)
	}
	if err := inject.Apply(m, plan, inject.ApplyOptions{}); err != nil {
		return nil, Info{}, fmt.Errorf("sensitivity: new head: %w", err)
	}
	var prog *train.Program
	if err := w.Do(func() error {
		var err error
		prog, err = train.Compile(m, train.Options{Trainable: targets})
		return err
	}); err != nil {
		return nil, Info{}, fmt.Errorf("sensitivity: %w", err)
	}
	defer w.Do(func() error { prog.Close(); return nil })

	loader := data.NewLoader(split, pre, opt.BatchSize, true, opt.Seed, opt.Workers)
	batches := min(opt.Batches, loader.NumBatches())
	it := loader.Epoch(ctx, 0, 0)
	defer it.Close()
	// Σ grad² accumulates in libtorch tensors, copied out once at the end (copying
	// every gradient to Go each batch doubled the memory on vit_b_16).
	acc := map[string]*ts.Tensor{}
	defer w.Do(func() error {
		for _, t := range acc {
			t.Drop()
		}
		return nil
	})
	info := Info{Fingerprint: fp, Classes: opt.Classes, HeadSeed: opt.HeadSeed, BatchSize: opt.BatchSize}
	for b := 0; b < batches; b++ {
		batch, ok, err := it.Next()
		if err != nil {
			return nil, Info{}, err
		}
		if !ok {
			break
		}
		if err := checkLabels(batch.Labels, opt.Classes, split, batch.Index); err != nil {
			return nil, Info{}, err
		}
		err = w.Do(func() error {
			if err := prog.ZeroGrad(); err != nil {
				return err
			}
			if _, err := prog.ForwardBackward(batch.Images, batch.Labels, batch.N); err != nil {
				return err
			}
			for _, name := range targets {
				g, err := prog.GradTensor(name)
				if err != nil {
					return err
				}
				if g == nil { // backward did not reach it: no contribution
					continue
				}
				sq, err := g.Square(true)
				if err != nil {
					return fmt.Errorf("grad² of %q: %w", name, err)
				}
				if a := acc[name]; a == nil {
					acc[name] = sq
				} else {
					err = a.Add_(sq)
					sq.Drop()
					if err != nil {
						return fmt.Errorf("grad² of %q: %w", name, err)
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, Info{}, fmt.Errorf("sensitivity: batch %d: %w", b+1, err)
		}
		info.Batches++
		info.Examples += batch.N
		if progress != nil {
			progress(b+1, batches)
		}
		if ctx.Err() != nil {
			return nil, Info{}, ctx.Err()
		}
	}
	if info.Batches == 0 {
		return nil, Info{}, errors.New("sensitivity: the split is empty")
	}
	scores := Scores{}
	err = w.Do(func() error {
		for _, name := range targets {
			if a := acc[name]; a != nil {
				v, err := train.Floats32(a)
				if err != nil {
					return fmt.Errorf("scores of %q: %w", name, err)
				}
				scores[name] = v
			} else if shape, ok := prog.ParamShape(name); ok {
				scores[name] = make([]float32, onnxio.NumElements(shape))
			}
		}
		return nil
	})
	if err != nil {
		return nil, Info{}, err
	}
	return scores, info, nil
}

// scoredInitializers are the initializers holding the block weights and vectors.
func scoredInitializers(v *surgery.ViT) []string {
	seen := map[string]bool{}
	var names []string
	add := func(n string) {
		if n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	for _, l := range v.Linears() {
		add(l.Weight)
	}
	for _, vec := range v.Vectors() {
		add(vec.Init)
	}
	return names
}

func checkLabels(labels []int64, classes int, split *data.Split, index []int) error {
	for i, l := range labels {
		if l < 0 || int(l) >= classes {
			return fmt.Errorf("%s: label %d out of range for %d classes", split.Name(index[i]), l, classes)
		}
	}
	return nil
}
