package sensitivity

import (
	"context"
	"errors"
	"fmt"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
	"github.com/sptctl/sptctl/train"
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
// Patch and position embeddings, the class token and the head are not scored. m is not
// changed: the head goes into a copy that only the scoring graph uses. progress, if
// not nil, is called after each batch.
func Compute(ctx context.Context, e engine.Engine, m *onnxpb.ModelProto, split *data.Split, pre meta.Preprocess, opt Options, progress func(done, total int)) (Scores, Info, error) {
	if opt.Batches <= 0 || opt.BatchSize <= 0 {
		return nil, Info{}, fmt.Errorf("sensitivity: batches and batch size must be positive (got %d, %d)", opt.Batches, opt.BatchSize)
	}
	if opt.Classes < 2 {
		return nil, Info{}, fmt.Errorf("sensitivity: the task needs at least 2 classes, got %d", opt.Classes)
	}
	if err := inject.CheckClasses("sensitivity: classes", opt.Classes); err != nil {
		return nil, Info{}, err
	}
	fp, err := onnxio.Fingerprint(m.GetGraph())
	if err != nil {
		return nil, Info{}, err
	}
	scoring, targets, err := scoringModel(m, opt)
	if err != nil {
		return nil, Info{}, err
	}
	var prog engine.Program
	if err := e.Do(func() error {
		var err error
		prog, err = e.Compile(scoring, engine.Options{Trainable: targets})
		return err
	}); err != nil {
		return nil, Info{}, fmt.Errorf("sensitivity: %w", err)
	}
	scoring = nil // compiled: the executor holds the weights now
	defer e.Do(func() error { prog.Close(); return nil })

	info := Info{Fingerprint: fp, Classes: opt.Classes, HeadSeed: opt.HeadSeed, BatchSize: opt.BatchSize}
	if err := accumulate(ctx, e, prog, split, pre, opt, &info, progress); err != nil {
		return nil, Info{}, err
	}
	scores := Scores{}
	err = e.Do(func() error {
		for _, name := range targets {
			v, err := prog.GradSquareSum(name)
			if err != nil {
				return fmt.Errorf("scores of %q: %w", name, err)
			}
			scores[name] = v
		}
		return nil
	})
	if err != nil {
		return nil, Info{}, err
	}
	return scores, info, nil
}

// scoringModel returns the graph the gradients are taken on: a shallow copy of m
// whose graph has m's nodes and initializers plus a fresh head for the task (the plan
// of the "linear" strategy: the head alone). m's own graph is left as it was; the
// copy shares m's unchanged initializers. It also returns the scored initializers.
func scoringModel(m *onnxpb.ModelProto, opt Options) (*onnxpb.ModelProto, []string, error) {
	c := surgery.ShallowCopy(m)
	g := surgery.New(c)
	v, err := surgery.FindViT(g)
	if err != nil {
		return nil, nil, err
	}
	targets := scoredInitializers(v)
	plan, err := inject.Allocate(v, g, nil, inject.Options{Strategy: inject.Linear, Type: inject.LoRA, Rank: 1, Alpha: 1, Beta: 1, Classes: opt.Classes, HeadSeed: opt.HeadSeed})
	if err != nil {
		return nil, nil, fmt.Errorf("sensitivity: %w", err)
	}
	if err := inject.Apply(c, plan, inject.ApplyOptions{}); err != nil {
		return nil, nil, fmt.Errorf("sensitivity: new head: %w", err)
	}
	return c, targets, nil
}

// accumulate adds Σ grad² over the first opt.Batches batches of split, in the
// executor's memory.
func accumulate(ctx context.Context, e engine.Engine, prog engine.Program, split *data.Split, pre meta.Preprocess, opt Options, info *Info, progress func(done, total int)) error {
	loader := data.NewLoader(split, pre, opt.BatchSize, true, opt.Seed, opt.Workers)
	batches := min(opt.Batches, loader.NumBatches())
	it := loader.Epoch(ctx, 0, 0)
	defer it.Close()
	for b := 0; b < batches; b++ {
		batch, ok, err := it.Next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if err := checkLabels(batch.Labels, opt.Classes, split, batch.Index); err != nil {
			return err
		}
		err = e.Do(func() error {
			if _, err := train.Step(prog, batch.Images, batch.Labels, batch.N); err != nil {
				return err
			}
			return prog.AddGradSquares()
		})
		if err != nil {
			return fmt.Errorf("sensitivity: batch %d: %w", b+1, err)
		}
		info.Batches++
		info.Examples += batch.N
		if progress != nil {
			progress(b+1, batches)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if info.Batches == 0 {
		return errors.New("sensitivity: the split is empty")
	}
	return nil
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
