package main

import (
	"fmt"
	"math"
	"strings"
)

func renderPerTask(b *page, set settings, runs []run) {
	p := b.p
	// ---- per task tables
	p("## Per task\n\n")
	p("Test top-1 (%%) mean ± std over seeds; `merged` is the exported merged model evaluated in ONNX Runtime " +
		"(Adapters stay as nodes there); `before` is the untrained new head; seconds are the whole `sptctl tune` run " +
		"(sensitivity, allocation, training, two exports, four evaluations) on the shared 2-core machine.\n\n")
	for _, t := range set.Tasks {
		p("### %s\n\n%s\n\n", t, set.TaskDesc[t])
		p("| method | trainable | %% of backbone | test top-1 | merged (ORT) | before | train top-1 | seconds / run | SPT's allocation (seed %d) |\n", set.Seeds[0])
		p("|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, m := range mainMethods {
			rs := pick(runs, t, m)
			if len(rs) == 0 {
				continue
			}
			c, sh := trainable(rs)
			var before, trainTop, secs []float64
			for _, r := range rs {
				before = append(before, 100*r.Before)
				trainTop = append(trainTop, 100*r.Train.TrainTop1)
				secs = append(secs, r.seconds())
			}
			alloc := ""
			if strings.HasPrefix(m, "spt") {
				if r, ok := rs[set.Seeds[0]]; ok {
					alloc = allocation(r)
				}
			}
			cnt := commas(c)
			if strings.HasPrefix(m, "spt") {
				lo, hi := int64(math.MaxInt64), int64(0)
				for _, r := range rs {
					lo, hi = min(lo, r.Trainable), max(hi, r.Trainable)
				}
				if lo != hi {
					cnt = commas(lo) + "–" + commas(hi)
				}
			}
			p("| %s | %s | %.2f | **%s** | %s | %.1f | %.1f | %.0f | %s |\n", methodLabel[m], cnt, 100*sh,
				stats(top1s(rs, false)), stats(top1s(rs, true)), stats(before).Mean, stats(trainTop).Mean, stats(secs).Mean, alloc)
		}
		p("\n")
	}

}

func renderSweep(b *page, set settings, sweep map[string][]sweepPoint, fig func(string) string) {
	p := b.p
	// ---- sweep
	if len(sweep) > 0 {
		p("## Budget sweep: SPT-LoRA vs LoRA-qv\n\n")
		p("LoRA-qv at rank r fixes a trainable count; SPT-LoRA (rank-%d modules, sparse deltas, vectors) gets exactly that count as budget. "+
			"Same schedule as above.\n\n", set.Rank)
		p("± after a difference: √(s₁²+s₂²) of the two seed stds.\n\n")
		for _, t := range set.Sweeps {
			pts := sweep[t]
			if len(pts) == 0 {
				continue
			}
			p("**%s**\n\n", t)
			p("| LoRA-qv rank | trainable (LoRA-qv) | %% of backbone | LoRA-qv top-1 | SPT-LoRA trainable | SPT-LoRA top-1 | SPT − LoRA-qv |\n")
			p("|---:|---:|---:|---:|---:|---:|---:|\n")
			for _, pt := range pts {
				p("| %d | %s | %.2f | %s | %s | %s | %+.1f ± %.1f |\n", pt.Rank, commas(pt.QVCount), 100*pt.QVShare, pt.QV, commas(pt.SPTCnt), pt.SPT,
					pt.SPT.Mean-pt.QV.Mean, math.Hypot(pt.SPT.Std, pt.QV.Std))
			}
			p("\n")
		}
		p("![accuracy vs budget](%s)\n\n", fig("spt-budget-sweep.png"))
	}

}

func renderSens(b *page, set settings, sens map[string]*sensSummary, torch map[string]*torchSens, fig func(string) string) {
	p := b.p
	// ---- sensitivity
	if len(sens) > 0 {
		p("## Where the sensitive weights are\n\n")
		p("`sptctl sensitivity --json` per task (16 batches of 32 training images, head seed 0): the share of each layer's weights "+
			"that are among the top %.2g%% most sensitive of all block weights.\n\n", 100*firstSens(sens).Summary.Top)
		p("How much of this the random head decides, and the fitted and averaged heads compared (`--head`, `--head-seeds`): [RESULTS-sensitivity.md](RESULTS-sensitivity.md).\n\n")
		p("![sensitivity by depth and layer type](%s)\n\n", fig("spt-sensitivity.png"))
		kinds := firstSens(sens).Summary.Layers
		p("| task | most sensitive block | share by block (0 → %d) | share by layer type (%s) |\n|---|---:|---|---|\n",
			len(firstSens(sens).Summary.Blocks)-1, strings.Join(kinds, ", "))
		for _, t := range set.Tasks {
			s, ok := sens[t]
			if !ok {
				continue
			}
			best := 0
			for i, x := range s.Summary.Blocks {
				if x > s.Summary.Blocks[best] {
					best = i
				}
			}
			p("| %s | %d | %s | %s |\n", t, best, pcts(s.Summary.Blocks), pcts(s.Summary.Kinds))
		}
		p("\n")
		for _, t := range set.Tasks {
			if _, ok := sens[t]; ok {
				p("- [%s: block × layer](%s)\n", t, fig("spt-sensitivity-"+t+".png"))
			}
		}
		p("\n")
		if len(torch) > 0 {
			p("**Cross-check in PyTorch** (`bench/spt/torch_sensitivity.py`): the backbone rebuilt as a torchvision " +
				"`VisionTransformer` from the ONNX weights (its own head scores the upstream test top-1 shown, the same as `sptctl eval`), " +
				"Σ grad² over 16 batches of 32 with a fresh `nn.Linear` head (other random values and batch order than sptctl's):\n\n")
			p("| task | rebuild's upstream top-1 | by block: sptctl | by block: PyTorch | by layer type: sptctl | by layer type: PyTorch |\n|---|---:|---|---|---|---|\n")
			for _, t := range set.Tasks {
				s, ts := sens[t], torch[t]
				if s == nil || ts == nil {
					continue
				}
				p("| %s | %.2f%% | %s | %s | %s | %s |\n", t, 100*ts.Own, pcts(s.Summary.Blocks), pcts(ts.Blocks), pcts(s.Summary.Kinds), pcts(ts.Kinds))
			}
			p("\n")
		}
	}

}

func renderChecks(b *page, runs []run) {
	p := b.p
	// ---- checks
	p("## Checks\n\n")
	worst, worstRun := worstMerged(runs)
	p("- %d runs. Largest |trained − merged (ONNX Runtime)| test top-1 difference: %.2f points", len(runs), 100*worst)
	if worstRun != "" {
		p(" (`%s`)", worstRun)
	}
	p(".\n")
	for _, r := range runs {
		if r.Group != "repro" {
			continue
		}
		o, ok := pick(runs, r.Task, r.Method)[r.Seed]
		if !ok {
			continue
		}
		same := "identical"
		if o.After != r.After || o.Merged != r.Merged || o.Train.FinalLoss != r.Train.FinalLoss {
			same = "different"
		}
		p("- Reproducibility: `%s` %s seed %d run again from scratch (`%s`): test top-1 %.1f%% vs %.1f%%, merged %.1f%% vs %.1f%%, "+
			"final training loss %.6g vs %.6g: **%s**.\n", r.Task, methodLabel[r.Method], r.Seed, r.dir,
			100*r.After, 100*o.After, 100*r.Merged, 100*o.Merged, r.Train.FinalLoss, o.Train.FinalLoss, same)
	}
	if rb := backboneOf(runs); trueBackbone > 0 && rb != trueBackbone {
		p("- **sptctl over-counts this backbone**: `report.json`'s `backbone_params` (from `sptctl inspect`) is %s, "+
			"PyTorch's count of the same weights is %s (+%s). The shares of the backbone in this file use PyTorch's count; "+
			"`trainable_share` in the runs' report.json (and `--budget N%%`) use sptctl's.\n",
			commas(rb), commas(trueBackbone), commas(rb-trueBackbone))
	}
	var budgetMiss []string
	for _, r := range runs {
		if strings.HasPrefix(r.Method, "spt") && r.Budget > 0 {
			if miss := float64(r.Trainable-r.Budget) / float64(r.Budget); math.Abs(miss) > 0.01 {
				budgetMiss = append(budgetMiss, fmt.Sprintf("%s/%s/seed%d %+.1f%%", r.Task, r.Method, r.Seed, 100*miss))
			}
		}
	}
	if len(budgetMiss) == 0 {
		p("- Every SPT run's trainable count is within 1%% of its budget.\n")
	} else {
		p("- SPT runs more than 1%% off their budget: %s.\n", strings.Join(budgetMiss, "; "))
	}
	p("\n")
}

// allocation describes where an SPT run put its budget: the structured modules by
// block ("b0: q k v proj fc1 fc2; b1: proj"), the sparse entries and whole vectors.
func allocation(r run) string {
	byBlock := map[string][]string{}
	var order []string
	for _, l := range r.Plan.Structured {
		// names like blocks.3.fc1
		parts := strings.Split(l, ".")
		if len(parts) < 2 {
			continue
		}
		b, k := parts[len(parts)-2], parts[len(parts)-1]
		if _, ok := byBlock[b]; !ok {
			order = append(order, b)
		}
		byBlock[b] = append(byBlock[b], k)
	}
	var groups []string
	for _, b := range order {
		groups = append(groups, "b"+b+": "+strings.Join(byBlock[b], " "))
	}
	s := fmt.Sprintf("%d modules", len(r.Plan.Structured))
	if len(groups) > 0 {
		s += " (" + strings.Join(groups, "; ") + ")"
	}
	return fmt.Sprintf("%s, %s sparse entries, %d whole vectors", s, commas(r.Plan.Sparse), len(r.Plan.Vectors))
}

// worstMerged is the largest |trained − merged| test top-1 of the runs, and its run's folder.
func worstMerged(runs []run) (float64, string) {
	worst, worstRun := 0.0, ""
	for _, r := range runs {
		if d := math.Abs(r.After - r.Merged); d > worst {
			worst, worstRun = d, r.dir
		}
	}
	return worst, worstRun
}
