package inject

import (
	"math"
	"os"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// EnvViTB16 names a torchvision vit_b_16 ONNX file (bench/make_vit_b16.py writes one)
// for the full-size tests and benchmarks; they skip when it is unset.
const EnvViTB16 = "SPTCTL_VIT_B16"

func vitB16(tb testing.TB) fixture.Model {
	tb.Helper()
	path := os.Getenv(EnvViTB16)
	if path == "" {
		tb.Skip(EnvViTB16 + " is not set (path to a vit_b_16 ONNX file, e.g. bench/cache/vit_b_16.onnx)")
	}
	return fixture.Load(tb, path)
}

// BenchmarkAllocate: a 0.4M SPT-LoRA plan for a ViT-B/16-shaped model (12 blocks, dim
// 768, MLP 3072, fused q/k/v: 85 M candidate entries) on random scores, 10 classes.
func BenchmarkAllocate(b *testing.B) {
	us, s := synth(12, 768, 3072, true, 1)
	opt := DefaultOptions()
	opt.Budget = 400000
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := synthPlan(768, 10, opt.Budget, opt)
		if err := allocateSPT(p, us, s, opt); err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			b.ReportMetric(float64(p.Tau), "tau")
			b.ReportMetric(float64(len(p.Summary().Structured)), "structured")
		}
	}
}

// BenchmarkApplyViTB16 injects a 0.4M SPT-LoRA plan into vit_b_16 ($SPTCTL_VIT_B16).
func BenchmarkApplyViTB16(b *testing.B) {
	f := vitB16(b)
	opt := DefaultOptions()
	opt.Budget, opt.Classes = 400000, 10
	p, err := Allocate(f.V, f.G, randomScores(f.G, 1), opt)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		m := proto.Clone(f.M).(*onnxpb.ModelProto)
		b.StartTimer()
		if err := Apply(m, p, ApplyOptions{Dropout: 0.1}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllocateViTB16 allocates 0.4M on vit_b_16 ($SPTCTL_VIT_B16), random scores.
func BenchmarkAllocateViTB16(b *testing.B) {
	f := vitB16(b)
	s := randomScores(f.G, 1)
	opt := DefaultOptions()
	opt.Budget, opt.Classes = 400000, 10
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Allocate(f.V, f.G, s, opt); err != nil {
			b.Fatal(err)
		}
	}
}

// TestViTB16 checks the full-size claims on vit_b_16 ($SPTCTL_VIT_B16): plans
// within 1% of budgets from 0.1% to 2% of the backbone, LoRA and Adapter, and a 0.4M
// SPT-LoRA plan that injects in under 2 s with the trainable count equal to its total.
func TestViTB16(t *testing.T) {
	f := vitB16(t)
	s := randomScores(f.G, 3)
	backbone := BackboneParams(f.V, f.G)
	t.Logf("backbone %d parameters", backbone)
	for _, typ := range []Type{LoRA, Adapter} {
		for _, pct := range []float64{0.1, 0.2, 0.5, 1, 2} {
			opt := DefaultOptions()
			opt.Type, opt.Classes = typ, 10
			opt.Budget = int64(float64(backbone) * pct / 100)
			start := time.Now()
			p, err := Allocate(f.V, f.G, s, opt)
			if err != nil {
				t.Fatalf("%s %g%%: %v", typ, pct, err)
			}
			d := math.Abs(float64(p.Totals.Total-opt.Budget)) / float64(opt.Budget)
			if d > 0.01 {
				t.Errorf("%s %g%%: total %d, budget %d", typ, pct, p.Totals.Total, opt.Budget)
			}
			t.Logf("%s %.1f%% (%d): total %d in %v; τ %d, fill %d, %d structured, %d sparse, %d whole vectors",
				typ, pct, opt.Budget, p.Totals.Total, time.Since(start).Round(time.Millisecond), p.Tau, p.Fill,
				len(p.Summary().Structured), p.Totals.SparseEntries, len(p.Summary().Vectors))
		}
	}
	opt := DefaultOptions()
	opt.Budget, opt.Classes = 400000, 10
	p, err := Allocate(f.V, f.G, s, opt)
	if err != nil {
		t.Fatal(err)
	}
	m := proto.Clone(f.M).(*onnxpb.ModelProto)
	start := time.Now()
	if err := Apply(m, p, ApplyOptions{Dropout: 0.1}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("0.4M plan (%d structured, %d sparse entries) injected in %v", len(p.Summary().Structured), p.Totals.SparseEntries, took)
	if took > 2*time.Second {
		t.Errorf("injection took %v, want under 2 s", took)
	}
	checkInjected(t, m, p)
}
