package torch

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Worker runs functions on one goroutine locked to its OS thread: libtorch's grad
// mode, OpenMP's thread count and gotch's last-error slot are per OS thread, so every
// call into libtorch (Compile, Program methods, tensors) must happen inside Do.
//
// The thread's libtorch intra-op thread count is set to runtime.NumCPU() (or the
// count given to NewWorkerThreads).
type Worker struct {
	jobs chan job
	once sync.Once
	done chan struct{}
}

type job struct {
	f   func() error
	out chan error
}

// ErrWorkerClosed is returned by Do after Close.
var ErrWorkerClosed = errors.New("engine: worker is closed")

// NewWorker starts a worker whose libtorch uses one thread per CPU.
func NewWorker() *Worker { return NewWorkerThreads(0) }

// NewWorkerThreads starts a worker whose libtorch uses n intra-op threads (n < 1: one
// per CPU).
func NewWorkerThreads(n int) *Worker {
	w := &Worker{jobs: make(chan job), done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		SetNumThreads(n)
		close(ready)
		for {
			select {
			case j := <-w.jobs:
				j.out <- guarded(j.f)
			case <-w.done:
				return
			}
		}
	}()
	<-ready
	return w
}

func guarded(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic on the torch thread: %v\n%s", r, debug.Stack())
		}
	}()
	return f()
}

// Do runs f on the worker's thread and returns its error (a panic in f comes back as
// an error). Do must not be called from inside f: that deadlocks.
func (w *Worker) Do(f func() error) error {
	out := make(chan error, 1)
	select {
	case w.jobs <- job{f: f, out: out}:
	case <-w.done:
		return ErrWorkerClosed
	}
	return <-out
}

// Close stops the worker after the function it is running, if any. Free the tensors
// made on it (Program.Close) first, through Do.
func (w *Worker) Close() {
	w.once.Do(func() { close(w.done) })
}

// Compile is the package's Compile behind engine.Engine; call it inside Do.
func (w *Worker) Compile(m *onnxpb.ModelProto, opt engine.Options) (engine.Program, error) {
	p, err := Compile(m, opt)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// SetSeed is the package's SetSeed behind engine.Engine; call it inside Do.
func (w *Worker) SetSeed(seed uint64) error { return SetSeed(seed) }

var (
	_ engine.Engine  = (*Worker)(nil)
	_ engine.Program = (*Program)(nil)
)
