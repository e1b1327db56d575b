package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStats(t *testing.T) {
	// mean 2.5; sample variance Σ(x−2.5)²/3 = 5/3
	s := stats([]float64{1, 2, 3, 4})
	if s.N != 4 || s.Mean != 2.5 || math.Abs(s.Std-math.Sqrt(5.0/3)) > 1e-12 {
		t.Fatalf("stats(1..4) = %+v, want mean 2.5, std %.6f", s, math.Sqrt(5.0/3))
	}
	if s := stats([]float64{7}); s.N != 1 || s.Mean != 7 || s.Std != 0 {
		t.Fatalf("stats(7) = %+v", s)
	}
	if s := stats(nil); s.N != 0 || !math.IsNaN(s.Mean) {
		t.Fatalf("stats(nil) = %+v", s)
	}
}

func TestCloseness(t *testing.T) {
	st := func(mean, std float64, n int) stat { return stat{mean, std, n} }
	for _, c := range []struct {
		name string
		c    precCmp
		want closeness
	}{
		{"inside", precCmp{st(80, 0.5, 3), st(80.3, 2, 3)}, within},
		{"at the std exactly", precCmp{st(80, 0.5, 3), st(79.5, 0.1, 3)}, within},
		{"outside, lower", precCmp{st(80, 0.5, 3), st(79.4, 0.1, 3)}, outside},
		{"outside, higher", precCmp{st(80, 0.5, 3), st(80.6, 0.1, 3)}, outside},
		{"bf16's own std does not count", precCmp{st(80, 0.1, 3), st(81, 5, 3)}, outside},
		{"one fp32 seed", precCmp{st(80, 0, 1), st(80, 0.1, 3)}, noStd},
		{"no bf16", precCmp{st(80, 0.5, 3), stats(nil)}, pending},
		{"no fp32", precCmp{stats(nil), st(80, 0.5, 3)}, pending},
	} {
		if got := c.c.closeness(); got != c.want {
			t.Errorf("%s: %+v: got %v, want %v", c.name, c.c, got, c.want)
		}
	}
}

// mkRun is a main run of task/method/seed with top-1 after and the given seconds.
func mkRun(task, method string, seed int, after, secs float64, start time.Time) run {
	var r run
	r.Task, r.Method, r.Seed, r.Group = task, method, seed, "main"
	r.After = after
	r.Stages = []struct {
		Stage   string  `json:"stage"`
		Seconds float64 `json:"seconds"`
	}{{"train", secs}}
	r.Train.Seconds = secs
	r.start, r.end = start, start.Add(time.Duration(secs*float64(time.Second)))
	return r
}

func TestOverallAndTime(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	// two workers: runs 0 and 1 together, then 2 after 0
	runs := []run{
		mkRun("a", "lora-qv", 0, 0.80, 100, t0),
		mkRun("b", "lora-qv", 0, 0.90, 100, t0.Add(10*time.Second)),
		mkRun("a", "lora-qv", 1, 0.70, 100, t0.Add(100*time.Second)),
		mkRun("b", "lora-qv", 1, 0.70, 100, t0.Add(110*time.Second)),
	}
	// per seed over tasks: 85, 70 → mean 77.5, std √(2·7.5²) = 10.607
	o := overall(runs, []string{"a", "b"}, "lora-qv")
	if o.N != 2 || math.Abs(o.Mean-77.5) > 1e-9 || math.Abs(o.Std-7.5*math.Sqrt2) > 1e-9 {
		t.Fatalf("overall = %+v, want 77.5 ± %.3f over 2 seeds", o, 7.5*math.Sqrt2)
	}
	// a seed missing on a task does not count
	if o := overall(runs[:3], []string{"a", "b"}, "lora-qv"); o.N != 1 || math.Abs(o.Mean-85) > 1e-9 {
		t.Fatalf("overall without b/seed1 = %+v, want 85 over 1 seed", o)
	}
	tm := timeOf(runs, "")
	if tm.Runs != 4 || tm.Sum != 400 || tm.Wall != 400 || tm.WallRuns != 4 || tm.Workers != 2 || tm.Span != 210 {
		t.Fatalf("timeOf = %+v, want 4 runs, 400 s, 400 s wall, 2 workers, span 210 s", tm)
	}
	// file times that disagree with the runs' seconds (a copied cache): settings' count
	for i := range runs {
		runs[i].end = runs[i].start
	}
	tm = timeOf(runs, "2 CPU cores (x), shared with other work; 3 runs at a time, each pinned")
	if tm.Workers != 3 || tm.Span != 0 || tm.WallRuns != 0 || !strings.Contains(tm.WorkersFrom, "settings") {
		t.Fatalf("timeOf with bad file times = %+v, want 3 workers from settings, no span", tm)
	}
}

func TestLoadRunsMissingDir(t *testing.T) {
	if rs := loadRuns(filepath.Join(t.TempDir(), "absent")); len(rs) != 0 {
		t.Fatalf("loadRuns of a missing folder: %d runs", len(rs))
	}
	// an unfinished run (meta.json only) is skipped
	d := filepath.Join(t.TempDir(), "t", "m", "seed0")
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "meta.json"), []byte(`{"task":"t"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if rs := loadRuns(filepath.Dir(filepath.Dir(filepath.Dir(d)))); len(rs) != 0 {
		t.Fatalf("loadRuns with an unfinished run: %d runs", len(rs))
	}
}
