package sensitivity

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
	"github.com/sptctl/sptctl/train"
)

// The head the gradients flow through decides much of the scores: with the paper's
// fresh head (std 0.02, logits near zero, softmax near uniform) the gradient reaching
// the features is W^T(1/C − onehot(y)), a random direction per class, and another
// seed picks other directions and other weights. A head fitted to the task (probe) or
// computed from it (zero-mean) depends on the data instead of the seed.

// ProbeOptions control the linear probe of HeadProbe and the features of HeadZeroMean.
// Zero fields take the defaults.
type ProbeOptions struct {
	Examples    int     // images of the split whose features are used (4096), in the scoring order
	Epochs      int     // passes of AdamW over the cached features (30)
	BatchSize   int     // features per step (64)
	LR          float64 // peak learning rate of the cosine schedule (0.01)
	WeightDecay float64 // AdamW weight decay (1e-4)
}

func (o ProbeOptions) withDefaults() ProbeOptions {
	if o.Examples <= 0 {
		o.Examples = 4096
	}
	if o.Epochs <= 0 {
		o.Epochs = 30
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 64
	}
	if o.LR <= 0 {
		o.LR = 0.01
	}
	if o.WeightDecay < 0 {
		o.WeightDecay = 0
	} else if o.WeightDecay == 0 {
		o.WeightDecay = 1e-4
	}
	return o
}

// headSeed is the seed of the k-th of several random heads: the given seed first,
// then seeds derived from it (splitmix64), so that two runs with seeds s and s+1 share
// no head.
func headSeed(seed int64, k int) int64 {
	if k == 0 {
		return seed
	}
	z := uint64(seed) ^ uint64(k)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return int64(z ^ (z >> 31))
}

// features are the head's inputs for a split's first images.
type features struct {
	x      []float32 // n × dim
	labels []int64
	n, dim int
}

// headFeatures runs m (not changed) in eval mode up to its head's input on the first
// examples of split in the scoring order (seed), batch by batch.
func headFeatures(ctx context.Context, e engine.Engine, m *onnxpb.ModelProto, split *data.Split, pre meta.Preprocess, opt Options, po ProbeOptions) (*features, error) {
	fm := surgery.ShallowCopy(m)
	v, err := surgery.FindViT(surgery.New(fm))
	if err != nil {
		return nil, err
	}
	fm.Graph.Output = []*onnxpb.ValueInfoProto{{Name: proto.String(v.Head.Input)}}
	var prog engine.Program
	if err := e.Do(func() error {
		var err error
		prog, err = e.Compile(fm, engine.Options{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("sensitivity: features: %w", err)
	}
	defer e.Do(func() error { prog.Close(); return nil })
	loader := data.NewLoader(split, pre, opt.BatchSize, true, opt.Seed, opt.Workers)
	it := loader.Epoch(ctx, 0, 0)
	defer it.Close()
	f := &features{}
	for f.n < po.Examples {
		b, ok, err := it.Next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		if err := checkLabels(b.Labels, opt.Classes, split, b.Index); err != nil {
			return nil, err
		}
		n := min(b.N, po.Examples-f.n)
		var r *engine.StepResult
		if err := e.Do(func() error {
			var err error
			r, err = prog.Forward(b.Images[:n*len(b.Images)/b.N], nil, n)
			return err
		}); err != nil {
			return nil, fmt.Errorf("sensitivity: features: %w", err)
		}
		if r.Classes != v.Head.In || len(r.Logits) != n*v.Head.In {
			return nil, fmt.Errorf("sensitivity: features: the head's input %q has %d values per image, want %d", v.Head.Input, r.Classes, v.Head.In)
		}
		f.x = append(f.x, r.Logits...)
		f.labels = append(f.labels, b.Labels[:n]...)
		f.n += n
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	if f.n == 0 {
		return nil, errors.New("sensitivity: the split is empty")
	}
	f.dim = v.Head.In
	return f, nil
}

// fitProbe fits a linear classifier on f by AdamW (cross-entropy, cosine schedule,
// seeded initialisation and order) and returns it as a head on the raw features. It
// trains on standardised features (better conditioned whatever the backbone's scale)
// and folds the standardisation into the weights and bias. Pure Go: deterministic.
func fitProbe(f *features, classes int, seed int64, po ProbeOptions) *inject.HeadValues {
	n, d := f.n, f.dim
	mean, std := make([]float64, d), make([]float64, d)
	for i := 0; i < n; i++ {
		for j, x := range f.x[i*d : (i+1)*d] {
			mean[j] += float64(x)
		}
	}
	for j := range mean {
		mean[j] /= float64(n)
	}
	for i := 0; i < n; i++ {
		for j, x := range f.x[i*d : (i+1)*d] {
			dx := float64(x) - mean[j]
			std[j] += dx * dx
		}
	}
	for j := range std {
		std[j] = math.Sqrt(std[j]/float64(n)) + 1e-6
	}
	z := make([]float32, n*d)
	for i := 0; i < n; i++ {
		for j := 0; j < d; j++ {
			z[i*d+j] = float32((float64(f.x[i*d+j]) - mean[j]) / std[j])
		}
	}
	weight, bias := inject.HeadInit(d, classes, seed)
	gw, gb := make([]float32, len(weight)), make([]float32, classes)
	opt := train.NewAdamW(po.WeightDecay)
	wShape, bShape := []int64{int64(classes), int64(d)}, []int64{int64(classes)}
	rng := rand.New(rand.NewPCG(uint64(seed), 0x70726f6265)) // "probe"
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	perEpoch := (n + po.BatchSize - 1) / po.BatchSize
	total := po.Epochs * perEpoch
	logits := make([]float64, classes)
	step := 0
	for e := 0; e < po.Epochs; e++ {
		rng.Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
		for lo := 0; lo < n; lo += po.BatchSize {
			batch := order[lo:min(lo+po.BatchSize, n)]
			clear(gw)
			clear(gb)
			for _, i := range batch {
				x := z[i*d : (i+1)*d]
				softmax(logits, weight, bias, x)
				logits[f.labels[i]]--
				for c, p := range logits {
					g := float32(p / float64(len(batch)))
					gb[c] += g
					row := gw[c*d : (c+1)*d]
					for j, xj := range x {
						row[j] += g * xj
					}
				}
			}
			opt.Begin()
			lr := train.CosineLR(po.LR, 0, step, 0, total)
			opt.Update("weight", wShape, weight, gw, lr)
			opt.Update("bias", bShape, bias, gb, lr)
			step++
		}
	}
	// W·(x−μ)/σ + b = (W/σ)·x + (b − (W/σ)·μ)
	for c := 0; c < classes; c++ {
		shift := 0.0
		for j := 0; j < d; j++ {
			wj := float64(weight[c*d+j]) / std[j]
			weight[c*d+j] = float32(wj)
			shift += wj * mean[j]
		}
		bias[c] = float32(float64(bias[c]) - shift)
	}
	return &inject.HeadValues{Weight: weight, Bias: bias}
}

// softmax writes the class probabilities of x under (weight, bias) into p.
func softmax(p []float64, weight, bias, x []float32) {
	d := len(x)
	top := math.Inf(-1)
	for c := range p {
		s := float64(bias[c])
		for j, xj := range x {
			s += float64(weight[c*d+j]) * float64(xj)
		}
		p[c] = s
		top = max(top, s)
	}
	sum := 0.0
	for c := range p {
		p[c] = math.Exp(p[c] - top)
		sum += p[c]
	}
	for c := range p {
		p[c] /= sum
	}
}

// classMeanHead is the zero-mean head: row c is the mean feature of class c minus the
// mean of all features (the rows average to zero over the examples), and the bias
// makes it the nearest-class-mean classifier, argmax_c −|x − μ_c|²:
// logit_c = (μ_c − μ)·x − (μ_c − μ)·μ − |μ_c − μ|²/2. Computed, not trained: no seed.
// A class without examples gets a zero row and bias.
func classMeanHead(f *features, classes int) *inject.HeadValues {
	d := f.dim
	all := make([]float64, d)
	sums := make([]float64, classes*d)
	counts := make([]int, classes)
	for i := 0; i < f.n; i++ {
		c := int(f.labels[i])
		counts[c]++
		for j, x := range f.x[i*d : (i+1)*d] {
			sums[c*d+j] += float64(x)
			all[j] += float64(x)
		}
	}
	for j := range all {
		all[j] /= float64(f.n)
	}
	h := &inject.HeadValues{Weight: make([]float32, classes*d), Bias: make([]float32, classes)}
	for c := 0; c < classes; c++ {
		if counts[c] == 0 {
			continue
		}
		var dot, sq float64
		for j := 0; j < d; j++ {
			wj := sums[c*d+j]/float64(counts[c]) - all[j]
			h.Weight[c*d+j] = float32(wj)
			dot += wj * all[j]
			sq += wj * wj
		}
		h.Bias[c] = float32(-dot - sq/2)
	}
	return h
}

// top1 is the share of f's examples that h classifies right.
func top1(h *inject.HeadValues, f *features, classes int) float64 {
	p := make([]float64, classes)
	right := 0
	for i := 0; i < f.n; i++ {
		softmax(p, h.Weight, h.Bias, f.x[i*f.dim:(i+1)*f.dim])
		best := 0
		for c := range p {
			if p[c] > p[best] {
				best = c
			}
		}
		if int64(best) == f.labels[i] {
			right++
		}
	}
	return float64(right) / float64(f.n)
}
