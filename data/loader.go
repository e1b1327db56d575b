package data

import (
	"context"
	"fmt"
	"image"
	"math/bits"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/sptctl/sptctl/internal/meta"
)

// Batch is a batch of preprocessed examples. Each batch has its own slices: the
// consumer may keep or modify them.
type Batch struct {
	Images  []float32 // N×C×H×W, channel-major per image
	Labels  []int64   // N labels
	N       int       // examples in this batch (less than the batch size for a last partial batch)
	C, H, W int       // the shape of one image
	Index   []int     // the examples' indices in the split
	Pos     int       // the batch's position in its epoch, from 0
}

// Loader prepares batches of a split on worker goroutines, in an order fixed by (seed,
// epoch). Set the exported fields before calling Epoch.
type Loader struct {
	// DropLast leaves out the last batch of an epoch if it has fewer than the batch size
	// examples.
	DropLast bool
	// Prefetch is how many prepared batches may wait for the consumer (default 2).
	Prefetch int

	split     *Split
	p         meta.Preprocess
	batchSize int
	shuffle   bool
	seed      int64
	workers   int
}

// NewLoader returns a loader of split's examples preprocessed with p (see Tensor), in
// batches of batchSize (at least 1), shuffled each epoch if shuffle is set, decoded on
// workers goroutines (runtime.NumCPU() if workers ≤ 0).
func NewLoader(split *Split, p meta.Preprocess, batchSize int, shuffle bool, seed int64, workers int) *Loader {
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	return &Loader{split: split, p: p, batchSize: max(batchSize, 1), shuffle: shuffle, seed: seed, workers: workers}
}

// BatchSize returns the batch size.
func (l *Loader) BatchSize() int { return l.batchSize }

// NumBatches returns the number of batches an epoch has (depends on DropLast).
func (l *Loader) NumBatches() int {
	n := l.split.Len()
	if l.DropLast {
		return n / l.batchSize
	}
	return (n + l.batchSize - 1) / l.batchSize
}

// Order returns the order in which an epoch visits the split's examples: 0…n−1 without
// shuffling; otherwise a Fisher–Yates shuffle driven by a math/rand/v2 PCG seeded with
// (mix(seed), mix(epoch)), mix being SplitMix64's finaliser, and bounded draws by
// Lemire's method on the PCG's raw Uint64 output. It depends only on (seed, epoch, n),
// not on the Go version's Shuffle or Perm algorithms.
func (l *Loader) Order(epoch int) []int {
	return order(l.split.Len(), l.shuffle, l.seed, epoch)
}

func order(n int, shuffle bool, seed int64, epoch int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	if !shuffle {
		return idx
	}
	r := rand.NewPCG(splitmix(uint64(seed)), splitmix(uint64(epoch)^0x9e3779b97f4a7c15))
	for i := n - 1; i > 0; i-- {
		j := int(boundedUint64(r, uint64(i+1)))
		idx[i], idx[j] = idx[j], idx[i]
	}
	return idx
}

// splitmix is SplitMix64's output function.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// boundedUint64 returns a uniform value in [0, n) (Lemire's nearly divisionless method).
func boundedUint64(r *rand.PCG, n uint64) uint64 {
	hi, lo := bits.Mul64(r.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(r.Uint64(), n)
		}
	}
	return hi
}

// Batches is one epoch's stream of batches (see Loader.Epoch).
type Batches struct {
	ctx     context.Context
	cancel  context.CancelFunc
	pending chan *pendingBatch
	wg      sync.WaitGroup
	done    bool
	err     error
}

type pendingBatch struct {
	b      Batch
	left   atomic.Int32
	ready  chan struct{}
	errMu  sync.Mutex
	errPos int // position in the batch of the first failing example
	err    error
}

type job struct {
	pb  *pendingBatch
	pos int // position in the batch
}

// Epoch starts preparing the batches of epoch, from batch number start (0 for a whole
// epoch; k to resume a run that had consumed k batches of this epoch: the batches are
// the same as those an uninterrupted epoch would give from there). Batches arrive in
// order from Next. Call Close when done (or cancel ctx, which may be nil) to stop the
// worker goroutines; Close waits for them to exit.
func (l *Loader) Epoch(ctx context.Context, epoch, start int) *Batches {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	prefetch := l.Prefetch
	if prefetch <= 0 {
		prefetch = 2
	}
	it := &Batches{ctx: ctx, cancel: cancel, pending: make(chan *pendingBatch, prefetch)}
	if err := CheckPreprocess(l.p); err != nil {
		it.err = err
		it.done = true
		cancel()
		close(it.pending)
		return it
	}
	ord := l.Order(epoch)
	nb := l.NumBatches()
	jobs := make(chan job, l.workers*2)
	C, H, W := l.p.Channels, l.p.Height, l.p.Width
	size := C * H * W

	// Producer: lays out batches in order and hands their examples to the workers.
	it.wg.Add(1)
	go func() {
		defer it.wg.Done()
		defer close(jobs)
		defer close(it.pending)
		for bi := max(start, 0); bi < nb; bi++ {
			lo := bi * l.batchSize
			hi := min(lo+l.batchSize, len(ord))
			n := hi - lo
			pb := &pendingBatch{ready: make(chan struct{}), errPos: -1}
			pb.b = Batch{
				Images: make([]float32, n*size),
				Labels: make([]int64, n),
				N:      n, C: C, H: H, W: W,
				Index: append([]int(nil), ord[lo:hi]...),
				Pos:   bi,
			}
			for j, ex := range pb.b.Index {
				pb.b.Labels[j] = int64(l.split.Label(ex))
			}
			pb.left.Store(int32(n))
			select {
			case it.pending <- pb:
			case <-ctx.Done():
				return
			}
			for j := range n {
				select {
				case jobs <- job{pb, j}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	// Workers: decode and preprocess one example at a time.
	for range l.workers {
		it.wg.Add(1)
		go func() {
			defer it.wg.Done()
			for jb := range jobs {
				if ctx.Err() != nil {
					continue // drain; the producer is stopping
				}
				pb := jb.pb
				ex := pb.b.Index[jb.pos]
				img, err := l.split.Image(ex)
				if err == nil {
					err = safeTensor(img, l.p, pb.b.Images[jb.pos*size:(jb.pos+1)*size])
					if err != nil {
						err = fmt.Errorf("%s: %w", l.split.Name(ex), err)
					}
				}
				if err != nil {
					pb.errMu.Lock()
					if pb.err == nil || jb.pos < pb.errPos {
						pb.err, pb.errPos = err, jb.pos
					}
					pb.errMu.Unlock()
				}
				if pb.left.Add(-1) == 0 {
					close(pb.ready)
				}
			}
		}()
	}
	return it
}

func safeTensor(img image.Image, p meta.Preprocess, dst []float32) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return Tensor(img, p, dst)
}

// Next returns the next batch; ok is false at the end of the epoch (err nil), after an
// error (a decode error names the example: "batch 3: decode images/x.png: …"; ctx's
// error if ctx was cancelled), or after Close. After an error the stream is stopped.
// Next is not safe for concurrent use.
func (it *Batches) Next() (b Batch, ok bool, err error) {
	if it.done {
		return Batch{}, false, it.err
	}
	var pb *pendingBatch
	select {
	case pb, ok = <-it.pending:
	case <-it.ctx.Done():
	}
	if !ok {
		it.finish(it.ctx.Err())
		return Batch{}, false, it.err
	}
	if pb.b.N > 0 {
		select {
		case <-pb.ready:
		case <-it.ctx.Done():
			it.finish(it.ctx.Err())
			return Batch{}, false, it.err
		}
	}
	if pb.err != nil {
		it.finish(fmt.Errorf("batch %d: %w", pb.b.Pos, pb.err))
		return Batch{}, false, it.err
	}
	return pb.b, true, nil
}

// finish stops the stream with err (nil at a normal end).
func (it *Batches) finish(err error) {
	if it.done {
		return
	}
	it.done = true
	it.err = err
	it.cancel()
	it.wg.Wait()
}

// Err returns the error that stopped the stream, if any.
func (it *Batches) Err() error { return it.err }

// Close stops the workers and waits for them to exit. It is safe to call more than once
// and after the stream ended.
func (it *Batches) Close() {
	it.cancel()
	it.wg.Wait()
	it.done = true
}
