package sensitivity

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/scratch"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
	"github.com/sptctl/sptctl/train"
)

// Options control Compute.
type Options struct {
	Batches   int   // batches of the split to accumulate (16 in the reference)
	BatchSize int   // images per batch (32 in the reference)
	Classes   int   // the task's classes: the size of the head the gradients flow through
	HeadSeed  int64 // seed of that head (inject reuses it); of the probe's init and order
	Seed      int64 // seed of the batch order
	Workers   int   // image decoders (0: one per CPU)
	// Head is the head the gradients flow through: inject.HeadRandom (also ""), the
	// paper's fresh seeded head; inject.HeadProbe, a linear probe fitted first on the
	// split's features; inject.HeadZeroMean, the centred class-mean head.
	Head string
	// HeadSeeds averages the scores of that many random heads (HeadRandom only; 0: 1).
	HeadSeeds int
	Probe     ProbeOptions // HeadProbe and HeadZeroMean
	// ReleaseWeights gives m's weights up: once the last scoring program is compiled
	// (the executor holds its own copy), Compute drops the data of m's initializers
	// and returns the memory to the system, so a large model's file bytes are not
	// kept while the batches run. m keeps its graph and its initializers' names,
	// types and shapes (what Write and Summarize read). For callers done with the
	// weights, as the sensitivity command; tune, which goes on to inject, is not.
	ReleaseWeights bool
	// SpillDir, if not empty, is the folder of a temporary file that holds the
	// running Σ grad² sums between batches (with 2 or more batches): each batch's
	// forward then runs without them (on vit_b_16, 330 MiB less at the peak), and
	// its backward reads each sum back just before adding to it, so the scores are
	// the same to the bit. It costs about twice the sums' size in file I/O per batch.
	// The file is removed from the folder as soon as it is created (the space it
	// takes is freed when Compute returns, or when the process ends however it
	// ends), so none is left behind.
	SpillDir string
}

// Compute scores the sensitivity of every weight of m's transformer blocks for a task:
// with a head for the task's classes (a zero or foreign head would make every
// gradient zero or meaningless; see Options.Head for which), the model in train mode,
// it accumulates the squared gradient of the cross-entropy loss over the first
// Batches batches of split; with HeadSeeds > 1, the mean of that over as many random
// heads (the same batches). Patch and position embeddings, the class token and the
// head are not scored. m is not changed: the head goes into a copy that only the
// scoring graph uses. progress, if not nil, is called after each batch.
func Compute(ctx context.Context, e engine.Engine, m *onnxpb.ModelProto, split *data.Split, pre meta.Preprocess, opt Options, progress func(done, total int)) (Scores, Info, error) {
	if err := checkTask(split, opt); err != nil {
		return nil, Info{}, err
	}
	heads := max(opt.HeadSeeds, 1)
	switch opt.Head {
	case "":
		opt.Head = inject.HeadRandom
	case inject.HeadRandom:
	case inject.HeadProbe, inject.HeadZeroMean:
		if heads > 1 {
			return nil, Info{}, fmt.Errorf("sensitivity: %d head seeds: averaging is for random heads, not %s", heads, opt.Head)
		}
	default:
		return nil, Info{}, fmt.Errorf("sensitivity: unknown head %q (want %s, %s or %s)", opt.Head, inject.HeadRandom, inject.HeadProbe, inject.HeadZeroMean)
	}
	fp, err := onnxio.Fingerprint(m.GetGraph())
	if err != nil {
		return nil, Info{}, err
	}
	spill, err := openSpill(m, opt)
	if err != nil {
		return nil, Info{}, err
	}
	if spill != nil {
		defer spill.Close()
	}
	info := Info{Fingerprint: fp, Classes: opt.Classes, HeadSeed: opt.HeadSeed, BatchSize: opt.BatchSize, Head: opt.Head, HeadSeeds: heads}
	var values *inject.HeadValues
	if opt.Head != inject.HeadRandom {
		if err := fitHead(ctx, e, m, split, pre, opt, &info); err != nil {
			return nil, Info{}, err
		}
		values = info.HeadValues
	}
	var scores Scores
	for k := 0; k < heads; k++ {
		var n Info
		release := opt.ReleaseWeights && k == heads-1
		s, err := scoreThrough(ctx, e, m, split, pre, opt, headSeed(opt.HeadSeed, k), values, release, spill, &n, func(done, total int) {
			if progress != nil {
				progress(k*total+done, heads*total)
			}
		})
		if err != nil {
			return nil, Info{}, err
		}
		info.Batches, info.Examples = n.Batches, n.Examples
		if scores == nil {
			scores = s
			continue
		}
		for name, x := range s {
			acc := scores[name]
			for i := range acc {
				acc[i] += x[i]
			}
		}
	}
	if heads > 1 {
		inv := 1 / float32(heads)
		for _, acc := range scores {
			for i := range acc {
				acc[i] *= inv
			}
		}
	}
	return scores, info, nil
}

// FitHead makes the head opt.Head names (inject.HeadProbe or inject.HeadZeroMean) the
// way Compute does before it scores (same features, same fit, same seeds), and
// scores nothing: for a baseline that is to start from the head SPT starts from (tune
// --head). The Info has the task's Classes, HeadSeed, Head, HeadSeeds (1),
// HeadValues, HeadTop1 and HeadExamples; no batches were scored. opt.Batches is not
// used; opt.BatchSize is the feature pass's batch size. m is not changed.
func FitHead(ctx context.Context, e engine.Engine, m *onnxpb.ModelProto, split *data.Split, pre meta.Preprocess, opt Options) (Info, error) {
	opt.Batches = 1 // not used: no batch is scored
	if err := checkTask(split, opt); err != nil {
		return Info{}, err
	}
	if opt.Head != inject.HeadProbe && opt.Head != inject.HeadZeroMean {
		return Info{}, fmt.Errorf("sensitivity: only a %s or %s head is fitted, not %q", inject.HeadProbe, inject.HeadZeroMean, opt.Head)
	}
	info := Info{Classes: opt.Classes, HeadSeed: opt.HeadSeed, BatchSize: opt.BatchSize, Head: opt.Head, HeadSeeds: 1}
	if err := fitHead(ctx, e, m, split, pre, opt, &info); err != nil {
		return Info{}, err
	}
	return info, nil
}

// fitHead fits opt.Head (probe or zero-mean) on the features of split's first images
// and records it in info (HeadValues, HeadTop1, HeadExamples).
func fitHead(ctx context.Context, e engine.Engine, m *onnxpb.ModelProto, split *data.Split, pre meta.Preprocess, opt Options, info *Info) error {
	po := opt.Probe.withDefaults()
	f, err := headFeatures(ctx, e, m, split, pre, opt, po)
	if err != nil {
		return err
	}
	var values *inject.HeadValues
	if opt.Head == inject.HeadProbe {
		values = fitProbe(f, opt.Classes, opt.HeadSeed, po)
	} else {
		values = classMeanHead(f, opt.Classes)
	}
	info.HeadValues, info.HeadTop1, info.HeadExamples = values, top1(values, f, opt.Classes), f.n
	return nil
}

// checkTask checks opt's batch settings and classes against split's labels.
func checkTask(split *data.Split, opt Options) error {
	if opt.Batches <= 0 || opt.BatchSize <= 0 {
		return fmt.Errorf("sensitivity: batches and batch size must be positive (got %d, %d)", opt.Batches, opt.BatchSize)
	}
	if opt.Classes < 2 {
		return fmt.Errorf("sensitivity: the task needs at least 2 classes, got %d", opt.Classes)
	}
	if err := inject.CheckClasses("sensitivity: classes", opt.Classes); err != nil {
		return err
	}
	for i, l := range split.Labels() {
		if l >= opt.Classes {
			return fmt.Errorf("sensitivity: %s has label %d, but the task has %d classes", split.Name(i), l, opt.Classes)
		}
	}
	return nil
}

// scoreThrough accumulates Σ grad² of the scored initializers over the scoring
// batches through one head: values if not nil, else HeadInit with headSeed. With
// release, m's initializer data is dropped once the program is compiled. With spill,
// the sums go there between batches.
func scoreThrough(ctx context.Context, e engine.Engine, m *onnxpb.ModelProto, split *data.Split, pre meta.Preprocess, opt Options, headSeed int64, values *inject.HeadValues, release bool, spill *os.File, info *Info, progress func(done, total int)) (Scores, error) {
	scoring, targets, err := scoringModel(m, opt.Classes, headSeed, opt.Head, values)
	if err != nil {
		return nil, err
	}
	var prog engine.Program
	if err := e.Do(func() error {
		var err error
		prog, err = e.Compile(scoring, engine.Options{Trainable: targets, SquareGrads: true})
		return err
	}); err != nil {
		return nil, fmt.Errorf("sensitivity: %w", err)
	}
	scoring = nil // compiled: the executor holds the weights now
	defer e.Do(func() error { prog.Close(); return nil })
	if release {
		onnxio.DropData(m.GetGraph())
		debug.FreeOSMemory()
	}

	if err := accumulate(ctx, e, prog, split, pre, opt, spill, info, progress); err != nil {
		return nil, err
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
		return nil, err
	}
	return scores, nil
}

// scoringModel returns the graph the gradients are taken on: a shallow copy of m
// whose graph has m's nodes and initializers plus a head for the task (the plan of
// the "linear" strategy: the head alone; values, or HeadInit with headSeed). m's own
// graph is left as it was; the copy shares m's unchanged initializers. It also
// returns the scored initializers.
func scoringModel(m *onnxpb.ModelProto, classes int, headSeed int64, head string, values *inject.HeadValues) (*onnxpb.ModelProto, []string, error) {
	c := surgery.ShallowCopy(m)
	g := surgery.New(c)
	v, err := surgery.FindViT(g)
	if err != nil {
		return nil, nil, err
	}
	targets := scoredInitializers(v)
	plan, err := inject.Allocate(v, g, nil, inject.Options{Strategy: inject.Linear, Type: inject.LoRA, Rank: 1, Alpha: 1, Beta: 1,
		Classes: classes, HeadSeed: headSeed, Scoring: head, HeadValues: values})
	if err != nil {
		return nil, nil, fmt.Errorf("sensitivity: %w", err)
	}
	if err := inject.Apply(c, plan, inject.ApplyOptions{}); err != nil {
		return nil, nil, fmt.Errorf("sensitivity: new head: %w", err)
	}
	return c, targets, nil
}

// accumulate adds Σ grad² over the first opt.Batches batches of split, in the
// executor's memory; with spill, the sums go there after every batch but the last.
func accumulate(ctx context.Context, e engine.Engine, prog engine.Program, split *data.Split, pre meta.Preprocess, opt Options, spill *os.File, info *Info, progress func(done, total int)) error {
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
			if err := prog.AddGradSquares(); err != nil {
				return err
			}
			if spill != nil && b+1 < batches {
				return prog.SpillGradSquares(spill)
			}
			return nil
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

// spillPrefix names the temporary file of Options.SpillDir.
const spillPrefix = ".sptctl-gradsq-"

// openSpill makes the temporary file of opt.SpillDir (nil if none is needed) and
// removes it from the folder at once: it lives on as long as it is open. It fails
// early, naming the folder, if the folder is not writable or has too little room
// for the sums (at most the size of m's float initializers).
func openSpill(m *onnxpb.ModelProto, opt Options) (*os.File, error) {
	if opt.SpillDir == "" || opt.Batches < 2 {
		return nil, nil
	}
	var need int64
	for _, init := range m.GetGraph().GetInitializer() {
		if init.GetDataType() == int32(onnxpb.TensorProto_FLOAT) {
			need += 4 * onnxio.NumElements(init.GetDims())
		}
	}
	if free, ok := freeBytes(opt.SpillDir); ok && free < uint64(need) {
		return nil, fmt.Errorf("sensitivity: %s: %d MiB free, the Σ grad² sums need up to %d MiB there between batches",
			opt.SpillDir, free>>20, need>>20)
	}
	f, err := scratch.CreateFile(opt.SpillDir, spillPrefix, ".tmp")
	if err != nil {
		return nil, fmt.Errorf("sensitivity: temporary file for the Σ grad² sums: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("sensitivity: temporary file for the Σ grad² sums: %w", err)
	}
	return f, nil
}
