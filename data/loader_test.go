package data

import (
	"context"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"
)

func idxSplit(t *testing.T, n int) *Split {
	t.Helper()
	dir := t.TempDir()
	labels := make([]int, n)
	for i := range labels {
		labels[i] = i % 7
	}
	writeIDXSplit(t, dir, "train", 4, 3, labels, false)
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.Split("train")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func collect(t *testing.T, l *Loader, epoch, start int) []Batch {
	t.Helper()
	it := l.Epoch(context.Background(), epoch, start)
	defer it.Close()
	var bs []Batch
	for {
		b, ok, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return bs
		}
		bs = append(bs, b)
	}
}

func TestOrderDeterministic(t *testing.T) {
	a := order(100, true, 7, 0)
	if !reflect.DeepEqual(a, order(100, true, 7, 0)) {
		t.Fatal("same seed and epoch, different order")
	}
	if reflect.DeepEqual(a, order(100, true, 7, 1)) {
		t.Fatal("epochs 0 and 1 give the same order")
	}
	if reflect.DeepEqual(a, order(100, true, 8, 0)) {
		t.Fatal("seeds 7 and 8 give the same order")
	}
	s := slices.Clone(a)
	slices.Sort(s)
	for i, v := range s {
		if v != i {
			t.Fatalf("not a permutation: %v", a)
		}
	}
	if got := order(5, false, 7, 3); !reflect.DeepEqual(got, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("unshuffled %v", got)
	}
	// Pinned: a change here silently changes every resumed run's data order.
	if got, want := order(10, true, 1, 0), []int{2, 8, 7, 6, 5, 9, 0, 4, 3, 1}; !reflect.DeepEqual(got, want) {
		t.Fatalf("order(10, seed 1, epoch 0) = %#v, pinned %#v", got, want)
	}
}

func TestLoader(t *testing.T) {
	s := idxSplit(t, 10)
	p := DefaultPreprocess(3, 6, 5)
	l := NewLoader(s, p, 3, true, 42, 4)
	bs := collect(t, l, 0, 0)
	if len(bs) != 4 || l.NumBatches() != 4 {
		t.Fatalf("%d batches (NumBatches %d), want 4", len(bs), l.NumBatches())
	}
	var seen []int
	size := TensorSize(p)
	for k, b := range bs {
		if b.Pos != k || b.C != 3 || b.H != 6 || b.W != 5 {
			t.Fatalf("batch %d: pos %d shape %d×%d×%d", k, b.Pos, b.C, b.H, b.W)
		}
		wantN := 3
		if k == 3 {
			wantN = 1
		}
		if b.N != wantN || len(b.Labels) != wantN || len(b.Index) != wantN || len(b.Images) != wantN*size {
			t.Fatalf("batch %d: N %d, %d labels, %d indices, %d values", k, b.N, len(b.Labels), len(b.Index), len(b.Images))
		}
		for j, ex := range b.Index {
			if b.Labels[j] != int64(s.Label(ex)) {
				t.Fatalf("batch %d item %d: label %d, want %d", k, j, b.Labels[j], s.Label(ex))
			}
			img, _ := s.Image(ex)
			want := make([]float32, size)
			if err := Tensor(img, p, want); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(b.Images[j*size:(j+1)*size], want) {
				t.Fatalf("batch %d item %d: image differs", k, j)
			}
		}
		seen = append(seen, b.Index...)
	}
	if !reflect.DeepEqual(seen, l.Order(0)) {
		t.Fatalf("visited %v, order %v", seen, l.Order(0))
	}

	// Same seed: same batches, whatever the worker count.
	l1 := NewLoader(s, p, 3, true, 42, 1)
	if !reflect.DeepEqual(collect(t, l1, 0, 0), bs) {
		t.Fatal("1 worker and 4 workers give different batches")
	}
	// Another epoch: another order.
	if reflect.DeepEqual(l.Order(1), l.Order(0)) {
		t.Fatal("epoch 1 has epoch 0's order")
	}
	// Resuming at batch 2 gives the rest of the epoch.
	if rest := collect(t, l, 0, 2); !reflect.DeepEqual(rest, bs[2:]) {
		t.Fatalf("resumed epoch: %d batches, differ from the uninterrupted ones", len(rest))
	}
	if rest := collect(t, l, 0, 9); len(rest) != 0 {
		t.Fatalf("start past the end: %d batches", len(rest))
	}
	// DropLast.
	l.DropLast = true
	if bs := collect(t, l, 0, 0); len(bs) != 3 || l.NumBatches() != 3 || bs[2].N != 3 {
		t.Fatalf("DropLast: %d batches", len(bs))
	}
	// Unshuffled.
	if bs := collect(t, NewLoader(s, p, 4, false, 0, 0), 5, 0); !reflect.DeepEqual(bs[1].Index, []int{4, 5, 6, 7}) {
		t.Fatalf("unshuffled batch 1: %v", bs[1].Index)
	}
}

func TestLoaderStopEarly(t *testing.T) {
	s := idxSplit(t, 200)
	base := runtime.NumGoroutine()
	for range 20 {
		l := NewLoader(s, DefaultPreprocess(1, 8, 8), 4, true, 1, 8)
		it := l.Epoch(context.Background(), 0, 0)
		if _, ok, err := it.Next(); !ok || err != nil {
			t.Fatal(ok, err)
		}
		it.Close()
		it.Close()
		if _, ok, err := it.Next(); ok || err != nil {
			t.Fatalf("after Close: %v %v", ok, err)
		}
	}
	// Cancelling the context stops the stream with its error.
	ctx, cancel := context.WithCancel(context.Background())
	it := NewLoader(s, DefaultPreprocess(1, 8, 8), 4, true, 1, 8).Epoch(ctx, 0, 0)
	it.Next()
	cancel()
	for {
		_, ok, err := it.Next()
		if !ok {
			if err != context.Canceled {
				t.Fatalf("after cancel: %v", err)
			}
			break
		}
	}
	it.Close()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Fatalf("%d goroutines left running (%d before)", n, base)
	}
}

func TestLoaderErrors(t *testing.T) {
	dir := t.TempDir()
	writePNGFile(t, filepath.Join(dir, "images/a.png"), grayImg(2, 2, 0))
	writeFile(t, filepath.Join(dir, "images/bad.png"), []byte("garbage"))
	writeFile(t, filepath.Join(dir, "test.txt"), []byte("images/a.png 0\nimages/a.png 1\nimages/a.png 0\nimages/bad.png 1\n"))
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := d.Split("test")
	it := NewLoader(s, DefaultPreprocess(3, 4, 4), 2, false, 0, 2).Epoch(context.Background(), 0, 0)
	defer it.Close()
	if _, ok, err := it.Next(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	_, ok, err := it.Next()
	if ok {
		t.Fatal("batch with a corrupt image delivered")
	}
	wantErr(t, err, "batch 1: decode images/bad.png")
	if _, ok, err2 := it.Next(); ok || err2 != err {
		t.Fatalf("after error: %v %v", ok, err2)
	}

	// A bad preprocessing is reported by the first Next.
	it2 := NewLoader(s, DefaultPreprocess(0, 4, 4), 2, false, 0, 2).Epoch(context.Background(), 0, 0)
	_, _, err = it2.Next()
	wantErr(t, err, "preprocess")
	it2.Close()
}
