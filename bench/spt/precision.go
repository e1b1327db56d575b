package main

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The fp32 suite (run.sh, runs/) against the same suite trained with
// `tune --precision bf16` (PRECISION=bf16 run.sh, runs-bf16/).

const precisionTitle = "bf16 mixed precision (`tune --precision bf16`)"

// precisionAnchor is precisionTitle's link target in GitHub's markdown.
const precisionAnchor = "#bf16-mixed-precision-tune---precision-bf16"

// precisionNote says which suite the tables and figures show.
func precisionNote(ss suites) string {
	switch {
	case len(ss.fp32.Runs) > 0 && len(ss.bf16.Runs) > 0:
		return fmt.Sprintf("**Precision**: the tables and figures are the fp32 suite (`tune --precision fp32`, %d runs); "+
			"the same suite trained in bf16 (`runs-bf16/`, %d runs) is compared with it in [%s](%s).",
			len(ss.fp32.Runs), len(ss.bf16.Runs), precisionTitle, precisionAnchor)
	case len(ss.fp32.Runs) > 0:
		return fmt.Sprintf("**Precision**: fp32 (`tune --precision fp32`, %d runs); no bf16 suite (`runs-bf16/`) yet.", len(ss.fp32.Runs))
	}
	return fmt.Sprintf("**Precision: bf16 mixed precision** (`tune --precision bf16`, `runs-bf16/`, %d runs): the fp32 suite (`runs/`) "+
		"has no finished run yet, so every table and figure in this file is the bf16 suite's; the fp32 comparison is pending "+
		"(see [%s](%s)).", len(ss.bf16.Runs), precisionTitle, precisionAnchor)
}

// precCmp is one method's (or one task's) test top-1 in the two suites.
type precCmp struct{ FP32, BF16 stat }

// Diff is bf16 minus fp32, in points.
func (c precCmp) Diff() float64 { return c.BF16.Mean - c.FP32.Mean }

// closeness is whether bf16's mean top-1 is within the fp32 seed std of fp32's.
type closeness int

const (
	pending closeness = iota // a suite has no (complete) runs of it
	noStd                    // fp32 has one seed: no std to compare with
	within                   // |bf16 − fp32| <= fp32 seed std
	outside                  // |bf16 − fp32| >  fp32 seed std
)

func (c precCmp) closeness() closeness {
	switch {
	case c.FP32.N == 0 || c.BF16.N == 0:
		return pending
	case c.FP32.N < 2:
		return noStd
	case math.Abs(c.Diff()) <= c.FP32.Std:
		return within
	}
	return outside
}

func (k closeness) String() string {
	return [...]string{"pending", "cannot tell (fp32 has 1 seed)", "yes", "**no**"}[k]
}

// suiteTime is what a suite's runs cost.
type suiteTime struct {
	Runs int
	// Sum is Σ of the runs' seconds: each run's report.json stages (the whole
	// `sptctl tune`, as the per-task tables' "seconds / run"); Train the same of the
	// training stage alone (report.json's train.seconds).
	Sum, Train float64
	// Wall is Σ of the runs' file-time durations (meta.json → report.json), which
	// also hold what the stages do not time (process start, loading the model and
	// data); WallRuns the runs whose file times are usable (see timeOf).
	Wall     float64
	WallRuns int
	// Workers is the most runs at once, from the runs' file times (meta.json written
	// as a run starts, report.json as it ends), or from settings.json's machine line
	// (WorkersFrom says which); 0: unknown.
	Workers     int
	WorkersFrom string
	// Span is the first run's start to the last run's end by the same file times
	// (0: file times unusable).
	Span float64
}

var runsAtATime = regexp.MustCompile(`(\d+) runs at a time`)

// timeOf totals the runs' seconds; machine is settings.json's machine line (run.sh
// writes "N runs at a time" into it), the fallback for the worker count.
func timeOf(runs []run, machine string) suiteTime {
	var t suiteTime
	type event struct {
		at    time.Time
		delta int
	}
	var evs []event
	var first, last time.Time
	for _, r := range runs {
		t.Runs++
		s := r.seconds()
		t.Sum += s
		t.Train += r.Train.Seconds
		// file times count only where they agree with the run's own seconds: the
		// process holds the stages, so it cannot be shorter, and its start-up and
		// loading take seconds, not as long again (a copy of the cache without -p,
		// say, resets the times)
		wall := r.end.Sub(r.start).Seconds()
		if r.start.IsZero() || r.end.IsZero() || wall < 0.95*s || wall > 2*s+120 {
			continue
		}
		t.Wall += wall
		t.WallRuns++
		evs = append(evs, event{r.start, +1}, event{r.end, -1})
		if first.IsZero() || r.start.Before(first) {
			first = r.start
		}
		if r.end.After(last) {
			last = r.end
		}
	}
	if len(runs) > 0 && 2*t.WallRuns >= len(runs) { // at least half the runs have usable file times
		slices.SortFunc(evs, func(a, b event) int {
			if c := a.at.Compare(b.at); c != 0 {
				return c
			}
			return a.delta - b.delta // an end before a start at the same instant
		})
		n := 0
		for _, e := range evs {
			n += e.delta
			t.Workers = max(t.Workers, n)
		}
		t.WorkersFrom = "the most runs whose meta.json → report.json times overlap"
		t.Span = last.Sub(first).Seconds()
	} else if m := runsAtATime.FindStringSubmatch(machine); m != nil {
		t.Workers, _ = strconv.Atoi(m[1])
		t.WorkersFrom = "settings.json's machine line (the last run.sh invocation's)"
	}
	return t
}

// hours writes seconds as hours (or minutes, below one hour).
func hours(s float64) string {
	if s >= 3600 {
		return fmt.Sprintf("%.1f h", s/3600)
	}
	return fmt.Sprintf("%.0f min", s/60)
}

// renderPrecision writes the bf16 section: nothing without bf16 runs, the bf16
// suite's time and "pending" without fp32 runs, the comparison with both.
func renderPrecision(b *page, set settings, ss suites) {
	if len(ss.bf16.Runs) == 0 {
		return
	}
	p := b.p
	p("## %s\n\n", precisionTitle)
	p("The same suite (tasks, methods, seeds, schedule, budgets) run by `PRECISION=bf16 bench/spt/run.sh` into `runs-bf16/`: " +
		"`sptctl tune --precision bf16` runs the matrix products and convolutions of its sensitivity scoring and training in bfloat16 " +
		"under libtorch's CPU autocast (weights, gradients and optimizer state stay fp32). The test top-1 is, in both suites, " +
		"the exported model's in ONNX Runtime (fp32).\n\n")
	have := len(ss.fp32.Runs) > 0
	if !have {
		p("**The fp32 comparison is pending**: `runs/` holds no finished run yet; the tables above are the bf16 suite's. " +
			"Below, the bf16 suite's time alone.\n\n")
	} else {
		renderPrecisionAccuracy(b, set, ss)
	}
	renderPrecisionTime(b, set, ss, have)
	renderPrecisionChecks(b, ss)
}

func renderPrecisionAccuracy(b *page, set settings, ss suites) {
	p := b.p
	p("### Accuracy\n\n")
	p("Per method: test top-1 (%%) averaged over the tasks per seed, then mean ± std over the seeds present on every task (as the headline); " +
		"the difference bf16 − fp32 of those means; and the target: **is |bf16 − fp32| at most the fp32 seed std?**\n\n")
	p("| method | fp32 | bf16 | seeds (fp32 / bf16) | bf16 − fp32 | fp32 seed std | within it? |\n")
	p("|---|---:|---:|---|---:|---:|---|\n")
	count := map[closeness][]string{}
	for _, m := range mainMethods {
		c := precCmp{overall(ss.fp32.Runs, set.Tasks, m), overall(ss.bf16.Runs, set.Tasks, m)}
		if !hasMethod(ss.fp32.Runs, m) && !hasMethod(ss.bf16.Runs, m) {
			continue
		}
		k := c.closeness()
		count[k] = append(count[k], methodLabel[m])
		diff, std := "—", "—"
		if c.FP32.N > 0 && c.BF16.N > 0 {
			diff = fmt.Sprintf("%+.2f", c.Diff())
		}
		if c.FP32.N > 1 {
			std = fmt.Sprintf("%.2f", c.FP32.Std)
		}
		p("| %s | %s | %s | %d / %d | %s | %s | %s |\n", methodLabel[m], c.FP32, c.BF16, c.FP32.N, c.BF16.N, diff, std, k)
	}
	p("\n")
	decided := len(count[within]) + len(count[outside])
	switch {
	case decided == 0:
		p("No method has both suites complete on every task with at least two fp32 seeds yet: no verdict.\n\n")
	case len(count[outside]) == 0 && len(count[pending])+len(count[noStd]) == 0:
		p("**Target met**: every method's bf16 mean top-1 is within its fp32 seed std (%d of %d).\n\n", decided, decided)
	case len(count[outside]) == 0:
		p("So far within: all %d methods that both suites complete (%s); still open: %s.\n\n",
			decided, strings.Join(count[within], ", "), strings.Join(append(count[pending], count[noStd]...), ", "))
	default:
		p("**Target missed**: %d of %d methods outside their fp32 seed std (%s)", len(count[outside]), decided, strings.Join(count[outside], ", "))
		if open := append(count[pending], count[noStd]...); len(open) > 0 {
			p("; still open: %s", strings.Join(open, ", "))
		}
		p(".\n\n")
	}

	p("Per task: fp32 → bf16 mean test top-1 over seeds (bf16 − fp32); † where |bf16 − fp32| exceeds that task's fp32 seed std.\n\n")
	p("| method |")
	for _, t := range set.Tasks {
		p(" %s |", t)
	}
	p("\n|---|%s\n", strings.Repeat("---:|", len(set.Tasks)))
	for _, m := range mainMethods {
		if !hasMethod(ss.fp32.Runs, m) && !hasMethod(ss.bf16.Runs, m) {
			continue
		}
		p("| %s |", methodLabel[m])
		for _, t := range set.Tasks {
			c := precCmp{stats(top1s(pick(ss.fp32.Runs, t, m), false)), stats(top1s(pick(ss.bf16.Runs, t, m), false))}
			switch {
			case c.FP32.N == 0 && c.BF16.N == 0:
				p(" — |")
			case c.FP32.N == 0:
				p(" — → %.1f |", c.BF16.Mean)
			case c.BF16.N == 0:
				p(" %.1f → — |", c.FP32.Mean)
			default:
				mark := ""
				if c.closeness() == outside {
					mark = " †"
				}
				p(" %.1f → %.1f (%+.1f)%s |", c.FP32.Mean, c.BF16.Mean, c.Diff(), mark)
			}
		}
		p("\n")
	}
	p("\n")
}

func hasMethod(runs []run, method string) bool {
	for _, r := range runs {
		if r.Group == "main" && r.Method == method {
			return true
		}
	}
	return false
}

func renderPrecisionTime(b *page, set settings, ss suites, both bool) {
	p := b.p
	p("### Time\n\n")
	p("Σ seconds: the sum over the suite's finished runs (every group) of each run's seconds, which are the stage times " +
		"`sptctl tune` writes into report.json (`stages`: sensitivity, allocation, training, exports, evaluations; the per-task " +
		"tables' \"seconds / run\" is their mean); the training stage alone is report.json's `train.seconds`. " +
		"Wall-time estimate: Σ seconds ÷ the number of workers (runs at a time). The per-run wall, the workers and the first-start → " +
		"last-end span come from the runs' file times (run.sh writes meta.json as a run starts, tune writes report.json as it ends): " +
		"the per-run wall also holds what the stages do not time (the process's start, loading the model and the data), so it is " +
		"the larger; a suite that was interrupted and resumed has the pause in its span. The machine is shared with other work, " +
		"so these times are noisy.\n\n")
	p("| precision | runs | Σ seconds | Σ training stage | Σ per-run wall (file times) | workers | Σ seconds ÷ workers (wall estimate) | first start → last end |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	list := []suite{ss.bf16}
	if both {
		list = []suite{ss.fp32, ss.bf16}
	}
	var from []string
	for _, s := range list {
		t := timeOf(s.Runs, set.Machine)
		w, est, span, wall := "?", "—", "—", "—"
		if t.WallRuns == t.Runs {
			wall = hours(t.Wall)
		} else if t.WallRuns > 0 {
			wall = fmt.Sprintf("%s (%d of the runs)", hours(t.Wall), t.WallRuns)
		}
		if t.Workers > 0 {
			w, est = fmt.Sprint(t.Workers), hours(t.Sum/float64(t.Workers))
			if !slices.Contains(from, t.WorkersFrom) {
				from = append(from, t.WorkersFrom)
			}
		}
		if t.Span > 0 {
			span = hours(t.Span)
		}
		p("| %s | %d | %s (%s s) | %s | %s | %s | %s | %s |\n", s.Precision, t.Runs, hours(t.Sum), commas(int64(math.Round(t.Sum))), hours(t.Train), wall, w, est, span)
	}
	p("\n")
	if len(from) > 0 {
		p("Workers from %s.\n\n", strings.Join(from, "; "))
	}
	if !both {
		return
	}
	// the runs both suites finished, so that the ratio compares the same work
	type key struct {
		task, method string
		seed         int
	}
	fp := map[key]run{}
	for _, r := range ss.fp32.Runs {
		if r.Group == "main" {
			fp[key{r.Task, r.Method, r.Seed}] = r
		}
	}
	var n int
	var sf, sb, tf, tb float64
	for _, r := range ss.bf16.Runs {
		if o, ok := fp[key{r.Task, r.Method, r.Seed}]; ok && r.Group == "main" {
			n++
			sf, sb = sf+o.seconds(), sb+r.seconds()
			tf, tb = tf+o.Train.Seconds, tb+r.Train.Seconds
		}
	}
	if n > 0 && sf > 0 && tf > 0 {
		p("On the %d main runs (task × method × seed) both suites finished: fp32 %s, bf16 %s in all, **bf16 ÷ fp32 = %.2f**; "+
			"the training stage alone %s vs %s, **%.2f**.\n\n", n, hours(sf), hours(sb), sb/sf, hours(tf), hours(tb), tb/tf)
	}
}

// renderPrecisionChecks lists the bf16 runs whose report.json names another
// training precision, and the bf16 suite's largest trained-vs-merged difference.
func renderPrecisionChecks(b *page, ss suites) {
	p := b.p
	var wrong []string
	for _, s := range []suite{ss.fp32, ss.bf16} {
		for _, r := range s.Runs {
			if r.Train.Precision != "" && r.Train.Precision != s.Precision {
				wrong = append(wrong, fmt.Sprintf("`%s` (%s)", r.dir, r.Train.Precision))
			}
		}
	}
	p("### Checks\n\n")
	if len(wrong) == 0 {
		p("- Every run's report.json states the training precision of its suite (`train.precision`).\n")
	} else {
		p("- **Runs whose report.json states another training precision than their suite's**: %s.\n", strings.Join(wrong, ", "))
	}
	worst, worstRun := worstMerged(ss.bf16.Runs)
	p("- bf16 suite: %d runs; largest |trained − merged (ONNX Runtime)| test top-1 difference %.2f points", len(ss.bf16.Runs), 100*worst)
	if worstRun != "" {
		p(" (`%s`)", worstRun)
	}
	p(".\n\n")
}
