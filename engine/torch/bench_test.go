package torch

import (
	"fmt"
	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/surgery/constfold"
	"math/rand"
	"runtime"
	"testing"
	"time"
)

// BenchmarkForwardBackward: train-mode forward + cross-entropy + backward on fixtures,
// every weight trainable, reporting images/s (libtorch with one thread per CPU).
func BenchmarkForwardBackward(b *testing.B) {
	for _, c := range []struct {
		name  string
		batch int
	}{{"tv_op17_dynamic", 64}, {"tv_op14_static", 64}, {"tv_op17_static_b1", 16}} {
		b.Run(fmt.Sprintf("%s/batch=%d", c.name, c.batch), func(b *testing.B) {
			m, x, _ := loadFixture(b, c.name)
			per := int(constfold.Prod(x.Shape[1:]))
			rng := rand.New(rand.NewSource(1))
			imgs := make([]float32, c.batch*per)
			for k := range imgs {
				imgs[k] = float32(rng.NormFloat64())
			}
			labels := make([]int64, c.batch)
			for k := range labels {
				labels[k] = int64(k % 10)
			}
			var p *Program
			onTorch(b, func() error {
				all, err := allParams(m)
				if err != nil {
					return err
				}
				p, err = Compile(m, engine.Options{Trainable: all})
				if err != nil {
					return err
				}
				_, err = p.ForwardBackward(imgs, labels, c.batch) // warm-up
				return err
			})
			defer onTorch(b, func() error { p.Close(); return nil })
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				onTorch(b, func() error {
					if err := p.ZeroGrad(); err != nil {
						return err
					}
					_, err := p.ForwardBackward(imgs, labels, c.batch)
					return err
				})
			}
			b.ReportMetric(float64(b.N*c.batch)/time.Since(start).Seconds(), "images/s")
			b.ReportMetric(float64(runtime.NumCPU()), "threads")
		})
	}
}
