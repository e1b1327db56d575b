package export_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/ortcheck"
)

// TestViTB16 exports a 0.4M SPT-LoRA task of vit_b_16 ($SPTCTL_VIT_B16) merged and as
// a sidecar, checks both against the trained model with ONNX Runtime and reports sizes,
// times and latencies (median of a few runs; this is a check, the benchmark is bench/).
func TestViTB16(t *testing.T) {
	path := os.Getenv("SPTCTL_VIT_B16")
	if path == "" {
		t.Skip("SPTCTL_VIT_B16 is not set")
	}
	ortcheck.Init(t)
	dir := t.TempDir()
	base := fixture.Load(t, path)
	opt := inject.DefaultOptions()
	opt.Budget, opt.Classes = 400_000, 10
	p, err := inject.Allocate(base.V, base.G, randomScores(base.G, 3), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan: %d structured, %d sparse entries, total %d", len(p.Summary().Structured), p.Totals.SparseEntries, p.Totals.Total)
	tm := trained(t, base.M, p, false, 5)
	trainedPath := fixture.Save(t, tm, filepath.Join(dir, "trained.onnx"))

	start := time.Now()
	mm := fixture.Clone(tm)
	rep, err := export.Merge(mm, base.M)
	if err != nil {
		t.Fatal(err)
	}
	mergeTime := time.Since(start)
	mergedPath := fixture.Save(t, mm, filepath.Join(dir, "merged.onnx"))
	if got, want := len(mm.Graph.Node), len(base.M.Graph.Node); got != want {
		t.Errorf("merged graph has %d nodes, base %d", got, want)
	}
	start = time.Now()
	srep, err := export.Sidecar(tm, base.M, filepath.Join(dir, "side"), "task")
	if err != nil {
		t.Fatal(err)
	}
	sideTime := time.Since(start)
	start = time.Now()
	if _, err := export.Sidecar(tm, base.M, filepath.Join(dir, "side"), "task2"); err != nil {
		t.Fatal(err)
	}
	side2Time := time.Since(start)
	t.Logf("merge %.2fs (%s)", mergeTime.Seconds(), rep)
	t.Logf("sidecar %.2fs first, %.2fs second task; %s", sideTime.Seconds(), side2Time.Seconds(), srep)

	rng := rand.New(rand.NewPCG(1, 1))
	x := ort.Tensor{Shape: []int64{1, 3, 224, 224}, Data: make([]float32, 3*224*224)}
	for i := range x.Data {
		x.Data[i] = float32(rng.NormFloat64())
	}
	// Latency: the four models in turns (the machine may be shared), median of 7 turns.
	// The first session ONNX Runtime opens runs slower here whatever its model (seen:
	// 2x on 2 shared cores), so a throwaway one goes first.
	paths := []string{trainedPath, path, trainedPath, mergedPath, filepath.Join(dir, "side", "task.onnx")}
	sessions := make([]*ort.Session, len(paths))
	for i, p := range paths {
		if sessions[i], err = ort.Open(p); err != nil {
			t.Fatal(err)
		}
		defer sessions[i].Close()
	}
	outs := make([][]float32, len(paths))
	times := make([][]time.Duration, len(paths))
	for round := 0; round < 8; round++ {
		for i, s := range sessions {
			st := time.Now()
			y, err := s.Run(map[string]ort.Tensor{"input": x})
			if err != nil {
				t.Fatal(err)
			}
			if round > 0 {
				times[i] = append(times[i], time.Since(st))
			}
			outs[i] = y["logits"].Data
		}
	}
	med := make([]time.Duration, len(paths))
	for i := range times {
		slices.Sort(times[i])
		med[i] = times[i][len(times[i])/2]
	}
	med, outs = med[1:], outs[1:]
	want, got, gs := outs[1], outs[2], outs[3]
	t.Logf("merged vs trained rel %.2g, sidecar vs trained rel %.2g", fixture.RelDiff(got, want), fixture.RelDiff(gs, want))
	t.Logf("median latency (batch 1, interleaved): base %.0f ms, merged %.0f ms (%.3f×), sidecar %.0f ms (%.3f×), trained %.0f ms",
		ms(med[0]), ms(med[2]), float64(med[2])/float64(med[0]), ms(med[3]), float64(med[3])/float64(med[0]), ms(med[1]))
	if fixture.RelDiff(got, want) > 1e-5 || fixture.RelDiff(gs, want) > 1e-5 {
		t.Error("exports differ from the trained model")
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
