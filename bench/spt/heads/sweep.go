package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/sptctl/sptctl/bench/internal/plotline"
	"github.com/sptctl/sptctl/onnxio"
)

// The run folders heads.sh names (runname, sweepname there).

// sptLoRA is SPT-LoRA's main run (rank-8 modules at LoRA-qv's rank-8 count) with head h.
func sptLoRA(h string) string {
	if h == "random" {
		return "spt-lora"
	}
	return "spt-lora-head-" + h
}

// qvName is LoRA-qv at rank r (main: rank st.Rank).
func qvName(st settings, r int) string {
	if r == st.Rank {
		return "lora-qv"
	}
	return fmt.Sprintf("lora-qv-r%d", r)
}

// sweepName is SPT-LoRA with head h at LoRA-qv-rank-r's count.
func sweepName(st settings, h string, r int) string {
	switch {
	case r == st.Rank:
		return sptLoRA(h)
	case h == "random":
		return fmt.Sprintf("spt-lora-r%d", r)
	}
	return fmt.Sprintf("spt-lora-r%d-head-%s", r, h)
}

// qvProbe is LoRA-qv started from the probe head (tune --strategy lora-qv --head probe).
const qvProbe = "lora-qv-head-probe"

// runSet reads report.json of runs by task, name and seed; missing runs are absent.
type runSet struct {
	dir  string
	memo map[string]*tuneReport
}

func (rs *runSet) get(task, name string, seed int) *tuneReport {
	k := fmt.Sprintf("%s/%s/seed%d", task, name, seed)
	if r, ok := rs.memo[k]; ok {
		return r
	}
	var r *tuneReport
	if b, err := os.ReadFile(filepath.Join(rs.dir, k, "report.json")); err == nil {
		var t tuneReport
		if json.Unmarshal(b, &t) == nil {
			r = &t
		}
	}
	rs.memo[k] = r
	return r
}

// top1s are the test top-1s (%) of a run over seeds, the seeds that have one.
func (rs *runSet) top1s(task, name string, seeds []int) []float64 {
	var xs []float64
	for _, s := range seeds {
		if r := rs.get(task, name, s); r != nil {
			xs = append(xs, 100*r.After)
		}
	}
	return xs
}

// cellOf is mean ± std over seeds, with the number of seeds when some are missing.
func cellOf(xs []float64, seeds int) string {
	if len(xs) == 0 {
		return "–"
	}
	m, s := stat(xs)
	c := fmt.Sprintf("%.1f ± %.1f", m, s)
	if len(xs) == 1 {
		c = fmt.Sprintf("%.1f", m)
	}
	if len(xs) < seeds {
		c += fmt.Sprintf(" (%d of %d seeds)", len(xs), seeds)
	}
	return c
}

// sweepReport writes what the probe head's gain is made of (LoRA-qv from the probe
// head) and the budget sweep per head.
func sweepReport(runsDir string, st settings, out, figures string) error {
	rs := &runSet{dir: runsDir, memo: map[string]*tuneReport{}}
	acc, accSeeds := st.Acc, st.AccSeed
	if len(acc) == 0 {
		acc = st.Tasks
	}
	if len(accSeeds) == 0 {
		accSeeds = st.Seeds
	}
	var w bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	p("# Sensitivity heads: LoRA-qv from the probe head, and the budget sweep per head\n\n")
	p("Written by `%s` (do not edit by hand; rerun it). Reproduce with:\n\n```\n%s\n```\n\n", st.Command, st.Command)
	p("Machine: %s. Finished %s.\n\n", st.Machine, st.Date)
	p("%s\n\n", precisionLine(st.Precision))
	p("The companion of [RESULTS-sensitivity.md](RESULTS-sensitivity.md) (the heads, their stability, SPT against LoRA-qv at rank %d): ", st.Rank)
	p("the same backbone `%s`, the same tasks (carved as `bench/spt/run.sh` carves them, see [RESULTS.md](RESULTS.md)) and the same schedule ", st.Model)
	p("(`sptctl tune`, %d epochs, batch %d, AdamW lr %g, weight decay %g, %d warm-up epoch, branch dropout %g, trained on the 1,000 examples, tested on the test split). ", st.Epochs, st.Batch, st.LR, st.WD, st.Warmup, st.Dropout)
	p("Test top-1 (%%), mean ± std over seeds; a run missing from the cache is left out and the cell says how many seeds it has.\n\n")

	// ---- LoRA-qv from the probe head ----
	p("## What the probe head's gain is made of\n\n")
	p("An SPT run with `--head probe` differs from LoRA-qv in two ways: where its parameters go (the allocation from the probe's scores) ")
	p("and where training starts (the fitted probe head instead of a fresh one). `sptctl tune --strategy lora-qv --head probe` starts LoRA-qv from ")
	p("the very head SPT's sensitivity stage fits (same features, fit and seed), so:\n\n")
	p("- **start effect** = LoRA-qv from the probe − LoRA-qv from a fresh head (the same modules, another start);\n")
	p("- **allocation effect** = SPT-LoRA (probe) − LoRA-qv from the probe (the same start, another allocation at the same trainable count).\n\n")
	p("They add up to SPT-LoRA (probe) − LoRA-qv, RESULTS-sensitivity.md's gain. Seeds %v; rank-%d modules; SPT-LoRA's budget is LoRA-qv's count. ", accSeeds, st.Rank)
	p("\"untrained\" is the test top-1 of the injected model before training (the starting head on the pretrained backbone).\n\n")
	cols := []struct{ name, label string }{{"lora-qv", "LoRA-qv, fresh head"}, {qvProbe, "LoRA-qv, probe head"}, {sptLoRA("probe"), "SPT-LoRA, probe"}}
	p("| task | %s | start effect | allocation effect | untrained: fresh / probe head |\n|---|---:|---:|---:|---:|---:|---:|\n", cols[0].label+" | "+cols[1].label+" | "+cols[2].label)
	// paired per-seed differences; per-seed suite means over the tasks with all three runs
	type triple struct{ qv, qvp, spt float64 }
	perSeed := map[int][]triple{}
	for _, t := range acc {
		var start, alloc, bFresh, bProbe []float64
		for _, s := range accSeeds {
			a, b, c := rs.get(t, cols[0].name, s), rs.get(t, cols[1].name, s), rs.get(t, cols[2].name, s)
			if a != nil {
				bFresh = append(bFresh, 100*a.Before)
			}
			if b != nil {
				bProbe = append(bProbe, 100*b.Before)
			}
			if a == nil || b == nil || c == nil {
				continue
			}
			start, alloc = append(start, 100*(b.After-a.After)), append(alloc, 100*(c.After-b.After))
			perSeed[s] = append(perSeed[s], triple{100 * a.After, 100 * b.After, 100 * c.After})
		}
		p("| %s |", t)
		for _, c := range cols {
			p(" %s |", cellOf(rs.top1s(t, c.name, accSeeds), len(accSeeds)))
		}
		mb1, _ := stat(bFresh)
		mb2, _ := stat(bProbe)
		p(" %s | %s | %s / %s |\n", signed(start, len(accSeeds)), signed(alloc, len(accSeeds)), pct1(mb1), pct1(mb2))
	}
	var qvS, qvpS, sptS, startS, allocS []float64
	var used []string
	for _, s := range accSeeds {
		ts := perSeed[s]
		if len(ts) != len(acc) {
			continue
		}
		var q, qp, sp float64
		for _, x := range ts {
			q, qp, sp = q+x.qv, qp+x.qvp, sp+x.spt
		}
		n := float64(len(ts))
		q, qp, sp = q/n, qp/n, sp/n
		qvS, qvpS, sptS = append(qvS, q), append(qvpS, qp), append(sptS, sp)
		startS, allocS = append(startS, qp-q), append(allocS, sp-qp)
		used = append(used, fmt.Sprint(s))
	}
	if len(used) > 0 {
		p("| **mean over tasks** | **%s** | **%s** | **%s** | **%s** | **%s** | |\n\n", cellOf(qvS, len(qvS)), cellOf(qvpS, len(qvpS)), cellOf(sptS, len(sptS)), signed(startS, len(startS)), signed(allocS, len(allocS)))
		ms, ss := stat(startS)
		ma, sa := stat(allocS)
		mt, stt := stat(diffs(sptS, qvS))
		p("On the mean over the %d tasks (per-seed means over the tasks, seeds %s paired): SPT-LoRA with the probe head leads LoRA-qv from a fresh head by **%+.1f ± %.1f** points. ",
			len(acc), strings.Join(used, ", "), mt, stt)
		p("Of that, **%+.1f ± %.1f** is the start (LoRA-qv from the probe − LoRA-qv from a fresh head) and **%+.1f ± %.1f** the allocation at an equal start (SPT-LoRA with the probe − LoRA-qv from the probe). ", ms, ss, ma, sa)
		p("%s\n\n", splitVerdict(ma, sa, ms, ss, len(used)))
	} else {
		p("\nNo seed has all three runs on every task yet: no mean over tasks.\n\n")
	}

	// ---- the sweep ----
	if len(st.SweepTasks) > 0 {
		if err := sweepSection(&w, rs, st, out, figures); err != nil {
			return err
		}
	}
	return onnxio.WriteFileAtomic(out, func(f io.Writer) error { _, err := f.Write(w.Bytes()); return err })
}

// splitVerdict says which effect is larger, as measured (and whether the seed std
// separates them from zero).
func splitVerdict(ma, sa, ms, ss float64, seeds int) string {
	if seeds < 2 {
		return "One seed: no std, a direction only."
	}
	clear := func(m, s float64) string {
		if math.Abs(m) > s {
			return "beyond its seed std"
		}
		return "within its seed std"
	}
	return fmt.Sprintf("The allocation effect is %s, the start effect %s.", clear(ma, sa), clear(ms, ss))
}

func diffs(a, b []float64) []float64 {
	d := make([]float64, min(len(a), len(b)))
	for i := range d {
		d[i] = a[i] - b[i]
	}
	return d
}

func signed(xs []float64, seeds int) string {
	if len(xs) == 0 {
		return "–"
	}
	m, s := stat(xs)
	if len(xs) == 1 {
		if seeds > 1 {
			return fmt.Sprintf("%+.1f (1 seed)", m)
		}
		return fmt.Sprintf("%+.1f", m)
	}
	c := fmt.Sprintf("%+.1f ± %.1f", m, s)
	if len(xs) < seeds {
		c += fmt.Sprintf(" (%d seeds)", len(xs))
	}
	return c
}

func pct1(x float64) string {
	if math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf("%.1f", x)
}

// sweepPoint is one rank of one task's sweep: LoRA-qv at rank r and SPT-LoRA with each
// head at its count.
type sweepPoint struct {
	rank  int
	count int64                // LoRA-qv's trainable count (from its runs, else SPT's)
	qv    []float64            // top-1 over seeds
	spt   map[string][]float64 // head → top-1 over seeds
	delta map[string][]float64 // head → SPT − LoRA-qv, paired by seed
}

func sweepPoints(rs *runSet, st settings, task string) []sweepPoint {
	var pts []sweepPoint
	for _, r := range st.SweepRanks {
		pt := sweepPoint{rank: r, spt: map[string][]float64{}, delta: map[string][]float64{}}
		for _, s := range st.SweepSeeds {
			q := rs.get(task, qvName(st, r), s)
			if q != nil {
				pt.qv = append(pt.qv, 100*q.After)
				pt.count = q.Trainable
			}
			for _, h := range st.Heads {
				x := rs.get(task, sweepName(st, h, r), s)
				if x == nil {
					continue
				}
				pt.spt[h] = append(pt.spt[h], 100*x.After)
				if q != nil {
					pt.delta[h] = append(pt.delta[h], 100*(x.After-q.After))
				}
				if pt.count == 0 {
					pt.count = x.Trainable
				}
			}
		}
		pts = append(pts, pt)
	}
	return pts
}

func sweepSection(w *bytes.Buffer, rs *runSet, st settings, out, figures string) error {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	n := len(st.SweepSeeds)
	p("## The budget sweep per head\n\n")
	p("RESULTS.md's sweep with each head: LoRA-qv at rank r (q and v of every block) against SPT-LoRA (rank-%d modules) given exactly LoRA-qv-rank-r's trainable count, ", st.Rank)
	p("ranks %v, seeds %v. The rank-%d row is the main runs. \"SPT − LoRA-qv\" pairs the runs of a seed. ", st.SweepRanks, st.SweepSeeds, st.Rank)
	p("LoRA-qv starts from a fresh head; SPT-LoRA from its scoring head where that is the probe, else from the seeded random head: ")
	p("the probe columns hold the start effect as well as the allocation's (the section above splits the two at rank %d; no LoRA-qv-from-the-probe runs at the other ranks).\n\n", st.Rank)
	var figs []string
	for _, t := range st.SweepTasks {
		pts := sweepPoints(rs, st, t)
		p("### %s\n\n| rank | trainable | LoRA-qv |", t)
		for _, h := range st.Heads {
			p(" SPT-LoRA, %s |", h)
		}
		for _, h := range st.Heads {
			p(" SPT − LoRA-qv, %s |", h)
		}
		p("\n|---:|---:|---:|%s\n", strings.Repeat("---:|", 2*len(st.Heads)))
		for _, pt := range pts {
			count := "–"
			if pt.count > 0 {
				count = commas(pt.count)
			}
			p("| %d | %s | %s |", pt.rank, count, cellOf(pt.qv, n))
			for _, h := range st.Heads {
				p(" %s |", cellOf(pt.spt[h], n))
			}
			for _, h := range st.Heads {
				p(" %s |", signed(pt.delta[h], n))
			}
			p("\n")
		}
		p("\n")
		png := fmt.Sprintf("sweep-heads-%s.png", t)
		ok, err := plotHeadSweep(filepath.Join(figures, png), t, st, pts)
		if err != nil {
			return err
		}
		if ok {
			figs = append(figs, fmt.Sprintf("![%s](%s)", t, relTo(out, filepath.Join(figures, png))))
		}
	}
	// SPT − LoRA-qv per head and rank, over the sweep tasks
	p("### SPT-LoRA − LoRA-qv, mean over the sweep tasks\n\n")
	p("Per rank and head: the paired difference, averaged over %s (each task's mean over its seeds), and how many of the task × seed pairs are positive.\n\n", strings.Join(st.SweepTasks, " and "))
	p("| rank |%s\n|---:|%s\n", headCols(st.Heads), strings.Repeat("---:|", len(st.Heads)))
	all := map[string][]sweepPoint{}
	for _, t := range st.SweepTasks {
		all[t] = sweepPoints(rs, st, t)
	}
	for i, r := range st.SweepRanks {
		p("| %d |", r)
		for _, h := range st.Heads {
			var means []float64
			pos, pairs := 0, 0
			for _, t := range st.SweepTasks {
				d := all[t][i].delta[h]
				if len(d) == 0 {
					continue
				}
				m, _ := stat(d)
				means = append(means, m)
				for _, x := range d {
					pairs++
					if x > 0 {
						pos++
					}
				}
			}
			if len(means) < len(st.SweepTasks) {
				p(" – |")
				continue
			}
			m, _ := stat(means)
			p(" %+.1f (%d of %d positive) |", m, pos, pairs)
		}
		p("\n")
	}
	p("\n")
	if len(figs) > 0 {
		p("%s\n\n", strings.Join(figs, "\n"))
	}
	return nil
}

func headCols(heads []string) string {
	var b strings.Builder
	for _, h := range heads {
		fmt.Fprintf(&b, " %s |", h)
	}
	return b.String()
}

// relTo is path relative to the folder of file out (for links), else path.
func relTo(out, path string) string {
	ao, err1 := filepath.Abs(filepath.Dir(out))
	af, err2 := filepath.Abs(path)
	if err1 == nil && err2 == nil {
		if r, err := filepath.Rel(ao, af); err == nil {
			return filepath.ToSlash(r)
		}
	}
	return filepath.ToSlash(path)
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

var lineColors = []color.Color{
	color.RGBA{31, 119, 180, 255}, color.RGBA{214, 39, 40, 255}, color.RGBA{44, 160, 44, 255},
	color.RGBA{255, 127, 14, 255}, color.RGBA{148, 103, 189, 255},
}

// plotHeadSweep draws test top-1 against trainable parameters (log scale) for LoRA-qv
// and SPT-LoRA with each head, mean ± std over seeds; false when no point has runs.
func plotHeadSweep(path, task string, st settings, pts []sweepPoint) (bool, error) {
	pl := plot.New()
	pl.Title.Text = fmt.Sprintf("%s: test top-1 vs trainable parameters", task)
	pl.X.Label.Text = "trainable parameters (LoRA-qv ranks " + strings.Trim(fmt.Sprint(st.SweepRanks), "[]") + "), log scale"
	pl.Y.Label.Text = "test top-1 (%)"
	pl.X.Scale = plot.LogScale{}
	pl.X.Tick.Marker = countTicks(pts)
	drawn := false
	line := func(label string, c color.Color, get func(sweepPoint) []float64, shape draw.GlyphDrawer) error {
		var xys plotter.XYs
		var errs plotter.YErrors
		for _, pt := range pts {
			xs := get(pt)
			if len(xs) == 0 || pt.count == 0 {
				continue
			}
			m, s := stat(xs)
			if math.IsNaN(s) {
				s = 0
			}
			xys = append(xys, plotter.XY{X: float64(pt.count), Y: m})
			errs = append(errs, struct{ Low, High float64 }{s, s})
		}
		if len(xys) == 0 {
			return nil
		}
		drawn = true
		return plotline.Add(pl, label, c, shape, xys, errs)
	}
	if err := line("LoRA-qv", lineColors[0], func(pt sweepPoint) []float64 { return pt.qv }, draw.CircleGlyph{}); err != nil {
		return false, err
	}
	for i, h := range st.Heads {
		if err := line("SPT-LoRA, "+h, lineColors[(i+1)%len(lineColors)], func(pt sweepPoint) []float64 { return pt.spt[h] }, draw.TriangleGlyph{}); err != nil {
			return false, err
		}
	}
	if !drawn {
		return false, nil
	}
	pl.Legend.Top, pl.Legend.Left = false, false
	pl.Add(plotter.NewGrid())
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	return true, pl.Save(8*vg.Inch, 5*vg.Inch, path)
}

// countTicks labels the x axis at the sweep's trainable counts (and ranks).
type countTicks []sweepPoint

func (c countTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for _, pt := range c {
		if pt.count > 0 {
			ts = append(ts, plot.Tick{Value: float64(pt.count), Label: fmt.Sprintf("%s\nr=%d", commas(pt.count), pt.rank)})
		}
	}
	return ts
}
