package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// ---------- markdown ----------

// page is the markdown being written.
type page struct{ strings.Builder }

func (b *page) p(format string, a ...any) { fmt.Fprintf(b, format, a...) }

// render writes RESULTS.md: the tables of the headline suite (fp32 when it has runs,
// else bf16), the bf16 comparison where runs-bf16 has runs, the sweep, the sensitivity
// pattern and the checks.
func render(set settings, ss suites, sens map[string]*sensSummary, torch map[string]*torchSens, sweep map[string][]sweepPoint, fig func(string) string) string {
	var b page
	runs := ss.primary().Runs
	renderIntro(&b, set, ss, runs)
	renderHeadline(&b, set, ss, runs, fig)
	renderVerdict(&b, set, runs, sweep)
	renderPerTask(&b, set, runs)
	renderPrecision(&b, set, ss)
	renderSweep(&b, set, sweep, fig)
	renderSens(&b, set, sens, torch, fig)
	renderChecks(&b, runs)
	return b.String()
}

func renderIntro(b *page, set settings, ss suites, runs []run) {
	p := b.p
	p("# SPT benchmark: sensitivity-aware PEFT vs uniform baselines on a small ViT\n\n")
	p("Written by `bench/spt/run.sh` (do not edit by hand; rerun it). Reproduce with:\n\n")
	p("```\n%s\n```\n\n", set.Command)
	p("It carves the tasks into `bench/cache/spt/tasks/`, runs `sptctl tune --json` once per task × method × seed " +
		"into `bench/cache/spt/runs/` (with `PRECISION=bf16`, as `tune --precision bf16`, into `runs-bf16/`; a finished run, one with a report.json, is skipped on a rerun), scores " +
		"sensitivity per task, and runs `go run ./bench/spt` to write this file and the figures. " +
		"Numbers may move within the stated std on a rerun.\n\n")
	p("Machine: %s. Run finished %s.\n\n", set.Machine, set.Date)
	p("%s\n\n", precisionNote(ss))
	if set.Note != "" {
		p("**Note**: %s\n\n", set.Note)
	}

	// ---- setup
	p("## Setup\n\n")
	p("- **Backbone**: `%s`, the built-in torchvision ViT for 28×28 grayscale (patch 7, 6 blocks, dim 96, 3 heads, MLP 384), "+
		"pre-trained by sptctl in full on Fashion-MNIST classes 0-4 (%s). Backbone parameters (without head): %s.\n",
		set.Model, set.Upstream, commas(backboneCount(runs)))
	p("- **Tasks** (VTAB-1k style: 800 train + 200 val, a separate test split):\n")
	for _, t := range set.Tasks {
		p("  - `%s`: %s\n", t, set.TaskDesc[t])
	}
	p("- **Protocol**: train on `%s` (the 1,000 examples), report top-1 on the test split; no model selection on the test split "+
		"(every run trains for the fixed schedule and the last weights count).\n", set.Train)
	p("- **Schedule, the same for every method of a task**: %d epochs, batch %d, AdamW, weight decay %g, cosine with %d warm-up epochs, "+
		"branch dropout %g; peak lr %g for every parameter-efficient method and the linear probe, %g for full fine-tuning "+
		"(the usual lower rate when every weight moves). The rates were picked before the benchmark on `fmnist-new`'s "+
		"train800 → val200 (seed 0, 12 epochs): LoRA-qv reached 70.0 / 80.0 / 83.0%% val top-1 at 1e-3 / 3e-3 / 5e-3, "+
		"full fine-tuning 80.5 / 83.0%% at 1e-4 / 3e-4; the test split was not looked at. Seeds %v (the seed sets the new head, the LoRA/Adapter init, "+
		"the sensitivity batches and the batch order).\n",
		set.Epochs, set.Batch, set.WD, set.Warmup, set.Dropout, set.LR, set.LRFull, set.Seeds)
	p("- **Methods** (all `sptctl tune`, same code): `linear` (head only), `bitfit` (biases + head), `lora-qv` "+
		"(LoRA rank %d on q and v of every block), `adapter` (uniform Adapter rank %d on all six matrices of every block; "+
		"the rank whose count is closest to LoRA-qv's), `full`, `dora-qv` (DoRA rank %d on q and v of every block: "+
		"W' = m ⊙ (W + BA)/‖W + BA‖ per output unit, `--strategy qv --type dora`; it trains one magnitude per output "+
		"unit more than LoRA-qv), and SPT with LoRA (`spt-lora`), Adapter (`spt-adapter`) or DoRA (`spt-dora`) "+
		"modules (rank %d) given **exactly LoRA-qv's trainable count of that task as budget** (`--budget N`). "+
		"Trainable counts include the new head and the class token.\n\n", set.Rank, set.AdRank, set.Rank, set.Rank)
}

func renderHeadline(b *page, set settings, ss suites, runs []run, fig func(string) string) {
	p := b.p
	// ---- headline
	p("## Headline: mean test top-1 over the four tasks\n\n")
	p("%s suite (`tune --precision %s`). Mean over tasks per seed, then mean ± std over the %d seeds. Trainable: mean over tasks (the head differs by class count).\n\n",
		ss.primary().Precision, ss.primary().Precision, len(set.Seeds))
	p("| method | trainable | %% of backbone | mean top-1 (%%) |")
	for _, t := range set.Tasks {
		p(" %s |", t)
	}
	p("\n|---|---:|---:|---:|")
	for range set.Tasks {
		p("---:|")
	}
	p("\n")
	for _, m := range mainMethods {
		var n int64
		var share float64
		k := 0
		for _, t := range set.Tasks {
			c, s := trainable(pick(runs, t, m))
			if c > 0 {
				n += c
				share += s
				k++
			}
		}
		if k == 0 {
			continue
		}
		p("| %s | %s | %.2f | **%s** |", methodLabel[m], commas(n/int64(k)), 100*share/float64(k), overall(runs, set.Tasks, m))
		for _, t := range set.Tasks {
			p(" %s |", stats(top1s(pick(runs, t, m), false)))
		}
		p("\n")
	}
	p("\n")
	p("![test top-1 per task and method](%s)\n\n", fig("spt-accuracy.png"))

}

func renderVerdict(b *page, set settings, runs []run, sweep map[string][]sweepPoint) {
	p := b.p
	// ---- verdict
	p("## Does SPT beat the uniform baselines at equal budget here?\n\n")
	p("Differences in test top-1 points (SPT minus baseline), mean over seeds; in brackets the two methods' seed std. " +
		"A difference counts as a win or loss only when it exceeds both methods' std combined (√(s₁²+s₂²)); otherwise it is a tie.\n\n")
	type pair struct{ a, b string }
	pairs := []pair{{"spt-lora", "lora-qv"}, {"spt-adapter", "lora-qv"}, {"spt-adapter", "adapter"}, {"spt-lora", "adapter"},
		{"spt-dora", "dora-qv"}, {"spt-dora", "lora-qv"}}
	p("| task |")
	for _, pr := range pairs {
		p(" %s − %s |", methodLabel[pr.a], methodLabel[pr.b])
	}
	p("\n|---|")
	for range pairs {
		p("---:|")
	}
	p("\n")
	verdicts := make([][3]int, len(pairs)) // win, tie, loss
	sumDiff := make([]float64, len(pairs))
	nDiff := make([]int, len(pairs))
	for _, t := range set.Tasks {
		p("| %s |", t)
		for i, pr := range pairs {
			a, bb := stats(top1s(pick(runs, t, pr.a), false)), stats(top1s(pick(runs, t, pr.b), false))
			if a.N == 0 || bb.N == 0 {
				p(" — |")
				continue
			}
			if a.N < 2 || bb.N < 2 { // no std: no verdict
				p(" %+.1f (1 seed) |", a.Mean-bb.Mean)
				continue
			}
			d := a.Mean - bb.Mean
			sumDiff[i] += d
			nDiff[i]++
			noise := math.Hypot(a.Std, bb.Std)
			word := "tie"
			switch {
			case d > noise:
				word = "win"
				verdicts[i][0]++
			case d < -noise:
				word = "loss"
				verdicts[i][2]++
			default:
				verdicts[i][1]++
			}
			p(" %+.1f (±%.1f/±%.1f) %s |", d, a.Std, bb.Std, word)
		}
		p("\n")
	}
	p("| **mean over tasks** |")
	for i, pr := range pairs {
		o := overall(runs, set.Tasks, pr.a).Mean - overall(runs, set.Tasks, pr.b).Mean
		_ = sumDiff
		if math.IsNaN(o) { // a method without every task
			p(" — (%d win, %d tie, %d loss) |", verdicts[i][0], verdicts[i][1], verdicts[i][2])
			continue
		}
		p(" **%+.1f** (%d win, %d tie, %d loss) |", o, verdicts[i][0], verdicts[i][1], verdicts[i][2])
	}
	p("\n\n")
	p("In words, from the numbers above:\n\n")
	for i, pr := range pairs[:3] {
		oa, ob := overall(runs, set.Tasks, pr.a), overall(runs, set.Tasks, pr.b)
		if oa.N == 0 || ob.N == 0 {
			continue
		}
		d := oa.Mean - ob.Mean
		noise := math.Hypot(oa.Std, ob.Std)
		w, _, l := verdicts[i][0], verdicts[i][1], verdicts[i][2]
		var verdict string
		switch {
		case d > noise && l == 0 && 2*w >= len(set.Tasks):
			verdict = "SPT wins"
		case d > noise && l == 0:
			verdict = fmt.Sprintf("SPT is ahead on the four-task mean by more than the seed std, but clearly so on only %d of %d tasks (no loss)", w, len(set.Tasks))
		case d > noise:
			verdict = "SPT is ahead on average, though it loses on some task"
		case d < -noise && w == 0:
			verdict = "SPT is behind"
		case d < -noise:
			verdict = "SPT is behind on average, though it wins on some task"
		default:
			verdict = "level: the difference is within the seed std"
		}
		extra := ""
		if pr.b == "adapter" {
			extra = fmt.Sprintf(" (the uniform Adapter trains %s parameters against SPT's %s: no rank of it lands closer)",
				commas(meanTrainable(runs, set.Tasks, "adapter")), commas(meanTrainable(runs, set.Tasks, pr.a)))
		}
		p("- **%s vs %s**%s: **%s**. %+.1f points on the four-task mean (%.1f ± %.1f vs %.1f ± %.1f); "+
			"per task %d win, %d tie, %d loss.\n",
			methodLabel[pr.a], methodLabel[pr.b], extra, verdict, d, oa.Mean, oa.Std, ob.Mean, ob.Std, verdicts[i][0], verdicts[i][1], verdicts[i][2])
	}
	var mods, mods0 int
	other := map[string]int{}
	otherBlocks := map[string]bool{}
	for _, r := range runs {
		if r.Group == "main" && strings.HasPrefix(r.Method, "spt") {
			for _, l := range r.Plan.Structured {
				mods++
				if strings.HasPrefix(l, "blocks.0.") {
					mods0++
				} else if parts := strings.Split(l, "."); len(parts) >= 2 {
					other[parts[len(parts)-1]]++
					otherBlocks[parts[len(parts)-2]] = true
				}
			}
		}
	}
	if mods > 0 {
		var kinds, blocks []string
		for _, k := range []string{"q", "k", "v", "proj", "fc1", "fc2"} {
			if other[k] > 0 {
				kinds = append(kinds, fmt.Sprintf("%s×%d", k, other[k]))
			}
		}
		for b := range otherBlocks {
			blocks = append(blocks, b)
		}
		slices.Sort(blocks)
		p("- Where SPT put the budget (all main SPT runs): %d of its %d LoRA/Adapter modules sit in block 0; the other %d are %s "+
			"(blocks %s); the rest of the budget is sparse entries and a few whole vectors. LoRA-qv spreads the same count over q and v "+
			"of all six blocks. That follows the sensitivity pattern below: on this backbone the top grad² entries are almost all in block 0.\n",
			mods0, mods, mods-mods0, strings.Join(kinds, ", "), strings.Join(blocks, ", "))
	}
	for _, t := range set.Sweeps {
		pts := sweep[t]
		if len(pts) == 0 {
			continue
		}
		p("- Budget sweep on `%s` (below): SPT-LoRA minus LoRA-qv is", t)
		for i, pt := range pts {
			sep := ","
			if i == len(pts)-1 {
				sep = "."
			}
			p(" %+.1f ± %.1f at %s (%.1f%%)%s", pt.SPT.Mean-pt.QV.Mean, math.Hypot(pt.SPT.Std, pt.QV.Std), commas(pt.QVCount), 100*pt.QVShare, sep)
		}
		p("\n")
	}
	p("\n")

}
