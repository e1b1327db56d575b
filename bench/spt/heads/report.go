package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/sensitivity"
)

// settings is what heads.sh writes.
type settings struct {
	Command string   `json:"command"`
	Model   string   `json:"model"`
	Epochs  int      `json:"epochs"`
	Batch   int      `json:"batch_size"`
	LR      float64  `json:"lr"`
	WD      float64  `json:"weight_decay"`
	Warmup  int      `json:"warmup"`
	Dropout float64  `json:"dropout"`
	Rank    int      `json:"rank"`
	Seeds   []int    `json:"seeds"`
	Tasks   []string `json:"tasks"`
	Acc     []string `json:"acc_tasks"`
	AccSeed []int    `json:"acc_seeds"`
	Heads   []string `json:"heads"`
	// The sweep (SWEEP_TASKS, SWEEP_RANKS, SWEEP_SEEDS); SweepOnly: SWEEP_ONLY=1, only
	// the sweep and LoRA-qv-from-the-probe phases ran.
	SweepTasks []string `json:"sweep_tasks"`
	SweepRanks []int    `json:"sweep_ranks"`
	SweepSeeds []int    `json:"sweep_seeds"`
	SweepOnly  bool     `json:"sweep_only"`
	// Precision is heads.sh's PRECISION (fp32 | bf16): the --precision of both the
	// sensitivity scoring and the tune runs; empty in settings from before the knob.
	Precision string `json:"precision"`
	Machine   string `json:"machine"`
	Date      string `json:"date"`
}

// sensHeads are the heads whose stability heads.sh measures, in table order.
var sensHeads = []string{"random", "random4", "probe", "zero-mean"}

var headDesc = map[string]string{
	"random":    "`--head random`: the SPT paper's fresh head (std 0.02), seeded by the head seed",
	"random4":   "`--head random --head-seeds 4`: the mean of the scores of 4 random heads",
	"probe":     "`--head probe`: a linear probe fitted first (AdamW, 30 epochs on the cached features of the split's 1,000 images, seeded)",
	"zero-mean": "`--head zero-mean`: the centred class-mean head (nearest class mean; computed, no seed)",
}

// tuneReport is the part of a run's report.json used here.
type tuneReport struct {
	Trainable int64   `json:"trainable"`
	Before    float64 `json:"top1_before"`
	After     float64 `json:"top1_after"`
}

// stat is a mean and sample std.
func stat(xs []float64) (mean, std float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN()
	}
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	if len(xs) > 1 {
		for _, x := range xs {
			std += (x - mean) * (x - mean)
		}
		std = math.Sqrt(std / float64(len(xs)-1))
	}
	return mean, std
}

// readSettings reads heads.sh's settings.json.
func readSettings(path string) (settings, error) {
	var st settings
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

func report(runsDir, headsDir string, st settings, out, figures string) error {
	var w bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	p("# Which head should sensitivity score through?\n\n")
	p("Written by `%s` (do not edit by hand; rerun it). Reproduce with:\n\n```\n%s\n```\n\n", st.Command, st.Command)
	p("Machine: %s. Finished %s.\n\n", st.Machine, st.Date)
	p("%s\n\n", precisionLine(st.Precision))
	p("SPT scores a weight by Σ grad² of the task loss through a **new head** for the task. The paper's head is fresh and untrained; ")
	p("with logits near zero, the gradient that reaches the features is W^T(1/C − onehot(y)): one random direction per class, which the head seed picks. ")
	p("This file measures how much the scores, and SPT's accuracy, depend on that head, for four heads:\n\n")
	for _, h := range sensHeads {
		p("- **%s**: %s\n", h, headDesc[h])
	}
	p("\nBackbone `%s`; the SPT suite's four tasks, carved as `bench/spt/run.sh` carves them (see [RESULTS.md](RESULTS.md)); ", st.Model)
	p("sensitivity on `train800val200` (the 1,000 training examples), 16 batches of 32, as `tune` runs it.\n\n")

	// ---- stability ----
	type key struct{ task, head, variant string }
	over := map[key][2][]float64{}
	for _, t := range st.Tasks {
		for _, h := range sensHeads {
			for _, variant := range []string{"seed", "head"} {
				var files []string
				for _, s := range st.Seeds {
					f := fmt.Sprintf("seed%d-head%d.safetensors", s, s)
					if variant == "head" {
						f = fmt.Sprintf("seed%d-head%d.safetensors", st.Seeds[0], s)
					}
					files = append(files, filepath.Join(headsDir, t, h, f))
				}
				var flats [][]float32
				for _, f := range files {
					s, _, err := sensitivity.Read(f)
					if err != nil {
						flats = nil
						break
					}
					flats = append(flats, flat(s))
				}
				if len(flats) < 2 {
					continue
				}
				var o1, o5 []float64
				for i := range flats {
					for j := i + 1; j < len(flats); j++ {
						a, err := overlap(flats[i], flats[j], 0.01)
						if err != nil {
							return err
						}
						c, _ := overlap(flats[i], flats[j], 0.05)
						o1, o5 = append(o1, a), append(o5, c)
					}
				}
				over[key{t, h, variant}] = [2][]float64{o1, o5}
			}
		}
	}
	p("## Stability: do two seeds pick the same weights?\n\n")
	p("Share of the top 1%% (top 5%%) most sensitive block entries of one seed that are also among the other's, mean over the %d seed pairs of seeds %v (min–max in brackets). ", len(st.Seeds)*(len(st.Seeds)-1)/2, st.Seeds)
	p("1.00 means the same entries. Two ways to vary the seed:\n\n")
	p("- **head seed only** (`--head-seed s`, the same 16 batches): what the head alone changes. The issue's 0.52 for the paper's head on `fmnist-new` is this number.\n")
	p("- **seed as `tune` uses it** (`--seed s --head-seed s`): the head and the 512 of the 1,000 examples that are scored both change. No head can remove the second part; `zero-mean`, whose head does not depend on the seed (the same 1,000 images make it), shows how much of the change the batches alone cause.\n\n")
	cell := func(xs []float64) string {
		if len(xs) == 0 {
			return "–"
		}
		m, _ := stat(xs)
		return fmt.Sprintf("%.2f (%.2f–%.2f)", m, slices.Min(xs), slices.Max(xs))
	}
	for _, variant := range []string{"head", "seed"} {
		title := map[string]string{"head": "Head seed only (same batches)", "seed": "Seed as `tune` uses it (batches and head)"}[variant]
		p("### %s\n\n", title)
		p("| head | %s | mean over tasks |\n|---|", strings.Join(st.Tasks, " | "))
		p("%s---:|\n", strings.Repeat("---:|", len(st.Tasks)))
		for _, q := range []int{0, 1} {
			for _, h := range sensHeads {
				p("| %s, top-%s |", h, []string{"1%", "5%"}[q])
				var all []float64
				for _, t := range st.Tasks {
					xs := over[key{t, h, variant}][q]
					p(" %s |", cell(xs))
					if len(xs) > 0 {
						m, _ := stat(xs)
						all = append(all, m)
					}
				}
				if len(all) == len(st.Tasks) {
					m, _ := stat(all)
					p(" **%.2f** |\n", m)
				} else {
					p(" %s |\n", "–")
				}
			}
		}
		p("\n")
		if variant == "head" {
			p("(`zero-mean` has no head seed: measured on `fmnist-new` only, to show it.)\n\n")
		}
	}

	// ---- accuracy ----
	read := func(task, name string, seed int) (*tuneReport, error) {
		b, err := os.ReadFile(filepath.Join(runsDir, task, name, fmt.Sprintf("seed%d", seed), "report.json"))
		if err != nil {
			return nil, err
		}
		var r tuneReport
		return &r, json.Unmarshal(b, &r)
	}
	type method struct{ name, label string }
	methods := []method{{"lora-qv", "LoRA-qv"}}
	for _, h := range st.Heads {
		lora, adapter := "spt-lora-head-"+h, "spt-adapter-head-"+h
		if h == "random" { // tune's default head: run.sh's SPT runs (heads.sh's runname)
			lora, adapter = "spt-lora", "spt-adapter"
		}
		methods = append(methods, method{lora, "SPT-LoRA, " + h}, method{adapter, "SPT-Adapter, " + h})
	}
	acc, accSeeds := st.Acc, st.AccSeed
	if len(acc) == 0 {
		acc = st.Tasks
	}
	if len(accSeeds) == 0 {
		accSeeds = st.Seeds
	}
	// perSeed[method][seed index] = mean over tasks; perTask[method][task] = values over seeds
	perSeed := map[string][]float64{}
	perTask := map[string]map[string][]float64{}
	before := map[string]map[string][]float64{}
	complete := map[string]bool{}
	for _, m := range methods {
		perTask[m.name], before[m.name] = map[string][]float64{}, map[string][]float64{}
		complete[m.name] = true
		for _, s := range accSeeds {
			sum, n := 0.0, 0
			for _, t := range acc {
				r, err := read(t, m.name, s)
				if err != nil {
					complete[m.name] = false
					continue
				}
				perTask[m.name][t] = append(perTask[m.name][t], 100*r.After)
				before[m.name][t] = append(before[m.name][t], 100*r.Before)
				sum += 100 * r.After
				n++
			}
			if n == len(acc) {
				perSeed[m.name] = append(perSeed[m.name], sum/float64(n))
			}
		}
	}
	p("## Accuracy: SPT with each head against LoRA-qv at equal budget\n\n")
	p("`sptctl tune` with RESULTS.md's schedule (%d epochs, batch %d, AdamW lr %g, weight decay %g, %d warm-up epoch, branch dropout %g), rank-%d modules, ", st.Epochs, st.Batch, st.LR, st.WD, st.Warmup, st.Dropout, st.Rank)
	p("SPT given exactly LoRA-qv's trainable count of the task as budget; seeds %v (the seed sets the scoring batches, the head seed, the LoRA/Adapter init and the batch order). ", accSeeds)
	p("With `probe` and `zero-mean`, training starts from the head sensitivity scored through (the plan carries it); with `random` and `random4`, from the seeded random head (the first of the four). ")
	p("LoRA-qv does not depend on the scoring: one set of runs. Test top-1 (%%): mean over the tasks per seed, then mean ± std over seeds; per task mean ± std over seeds.\n\n")
	if len(acc) < len(st.Tasks) || len(st.Heads) < len(sensHeads) || len(accSeeds) < len(st.Seeds) {
		p("**Reduced grid**: the accuracy runs cover the tasks %s, the heads %s and the seeds %v only (of the stability section's %s, %s and %v): ",
			strings.Join(acc, ", "), strings.Join(st.Heads, ", "), accSeeds, strings.Join(st.Tasks, ", "), strings.Join(sensHeads, ", "), st.Seeds)
		if len(accSeeds) < 2 {
			p("With one seed there is no seed std: these rows show a direction, not a result. ")
		}
		if len(acc) < len(st.Tasks) {
			p("The suite mean below is the mean over these tasks, not RESULTS.md's four-task mean; its +1.0 for the paper's rule is a four-task number, so compare with this file's own `random` row.")
		}
		p("\n\n")
	}
	p("| method | suite mean | %s |\n|---|---:|%s\n", strings.Join(acc, " | "), strings.Repeat("---:|", len(acc)))
	for _, m := range methods {
		ms, ss := stat(perSeed[m.name])
		mark := ""
		if !complete[m.name] {
			mark = " (incomplete)"
		}
		ms1 := func(m, s float64) string {
			switch {
			case math.IsNaN(m):
				return "–"
			case len(accSeeds) < 2:
				return fmt.Sprintf("%.1f", m)
			}
			return fmt.Sprintf("%.1f ± %.1f", m, s)
		}
		p("| %s%s | **%s** |", m.label, mark, ms1(ms, ss))
		for _, t := range acc {
			p(" %s |", ms1(stat(perTask[m.name][t])))
		}
		p("\n")
	}
	p("\nSPT minus LoRA-qv on the mean over tasks: the difference of the per-seed suite means (runs of the same seed paired), mean ± std over seeds; and, for the target, whether it exceeds the paper rule's **+1.0** of RESULTS.md by more than that std.\n\n")
	p("| method | SPT − LoRA-qv | seeds | beats +1.0 by more than the std? | untrained head's test top-1 (mean) |\n|---|---:|---|---|---:|\n")
	qv := perSeed["lora-qv"]
	best, bestName := math.Inf(-1), ""
	for _, m := range methods[1:] {
		ps := perSeed[m.name]
		if len(ps) != len(qv) || len(qv) == 0 {
			p("| %s | – | incomplete | – | – |\n", m.label)
			continue
		}
		var d []float64
		var seeds []string
		for i := range ps {
			d = append(d, ps[i]-qv[i])
			seeds = append(seeds, fmt.Sprintf("%+.1f", ps[i]-qv[i]))
		}
		dm, ds := stat(d)
		verdict := "no"
		if len(d) < 2 {
			verdict = "cannot tell (one seed: no std)"
		} else if dm-1.0 > ds {
			verdict = "**yes**"
		}
		var bf []float64
		for _, t := range acc {
			bm, _ := stat(before[m.name][t])
			bf = append(bf, bm)
		}
		bm, _ := stat(bf)
		diff := fmt.Sprintf("%+.1f ± %.1f", dm, ds)
		if len(d) < 2 {
			diff = fmt.Sprintf("%+.1f", dm)
		}
		p("| %s | **%s** | %s | %s | %.1f |\n", m.label, diff, strings.Join(seeds, ", "), verdict, bm)
		if strings.HasPrefix(m.label, "SPT-LoRA") && dm > best {
			best, bestName = dm, m.label
		}
	}
	if bestName != "" {
		p("\nBest SPT-LoRA by the suite mean: **%s** (%+.1f points over LoRA-qv).\n\n", bestName, best)
	}
	p("sptctl's default head (`--head` not given) is `probe`, chosen by this table and the stability section; `--head random` is the paper's rule. ")
	p("LoRA-qv started from the probe head (what the probe's gain is made of) and RESULTS.md's budget sweep per head: [RESULTS-sensitivity-sweep.md](RESULTS-sensitivity-sweep.md).\n\n")

	// ---- where the sensitive weights are ----
	p("## Where the sensitive weights sit, per head\n\n")
	p("`sptctl sensitivity --plot` of seed 0 (head seed 0): the share of each layer's weights among the top 0.4%% of all block entries, by block and layer type. Share by block (0 → last), by layer type (q, k, v, proj, fc1, fc2), and the head's own top-1 on the 1,000 images it was made from:\n\n")
	p("| task | head | by block | by layer type | head top-1 | plot |\n|---|---|---|---|---:|---|\n")
	for _, t := range st.Tasks {
		for _, h := range sensHeads {
			b, err := os.ReadFile(filepath.Join(headsDir, t, h, fmt.Sprintf("seed%d-head%d.json", st.Seeds[0], st.Seeds[0])))
			if err != nil {
				continue
			}
			var r struct {
				Info    sensitivity.Info    `json:"info"`
				Summary sensitivity.Summary `json:"summary"`
			}
			if err := json.Unmarshal(b, &r); err != nil {
				return err
			}
			pct := func(xs []float64) string {
				var s []string
				for _, x := range xs {
					s = append(s, fmt.Sprintf("%.2f", 100*x))
				}
				return strings.Join(s, " / ") + " %"
			}
			acc := "–"
			if r.Info.HeadExamples > 0 {
				acc = fmt.Sprintf("%.1f%%", 100*r.Info.HeadTop1)
			}
			png := fmt.Sprintf("sens-head-%s-%s.png", t, h)
			rel := filepath.Join(figures, png)
			if ao, err := filepath.Abs(filepath.Dir(out)); err == nil {
				if af, err := filepath.Abs(rel); err == nil {
					if r, err := filepath.Rel(ao, af); err == nil {
						rel = r
					}
				}
			}
			p("| %s | %s | %s | %s | %s | [plot](%s) |\n", t, h, pct(r.Summary.Block), pct(r.Summary.Kind), acc, filepath.ToSlash(rel))
		}
	}
	p("\n")
	return onnxio.WriteFileAtomic(out, func(f io.Writer) error { _, err := f.Write(w.Bytes()); return err })
}

// precisionLine states the precision of the scoring and of the training.
func precisionLine(p string) string {
	switch p {
	case "":
		return "Precision: not recorded (a settings.json from before heads.sh's PRECISION knob, whose runs used sptctl's default " +
			"`--precision auto`: bf16 where the CPU has avx512_bf16 or amx_bf16, fp32 elsewhere)."
	case "fp32":
		return "Precision: **fp32** for the sensitivity scoring (`sptctl sensitivity --precision fp32`) and for the tune runs' " +
			"scoring and training (`sptctl tune --precision fp32`)."
	}
	return fmt.Sprintf("Precision: **%s mixed precision** for the sensitivity scoring (`sptctl sensitivity --precision %s`) and for the "+
		"tune runs' scoring and training (`sptctl tune --precision %s`): matrix products and convolutions in %s, weights, gradients "+
		"and optimizer state in fp32. The test top-1 is, as always, the exported model's in ONNX Runtime (fp32).", p, p, p, p)
}
