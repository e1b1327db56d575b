// Command spt turns the runs of the SPT benchmark (bench/spt/run.sh) into
// bench/RESULTS.md and the figures under bench/figures/.
//
// It reads every RUN/meta.json + RUN/report.json under -runs (one `sptctl tune` run
// each; meta.json is written by run.sh and says which task, method, seed and group the
// run belongs to) and every TASK.json under -sens (`sptctl sensitivity --json`), and
// writes the tables, the conclusions (computed from the numbers, so a rerun rewrites
// them consistently) and the PNGs.
//
// Usage: go run ./bench/spt -runs bench/cache/spt/runs -sens bench/cache/spt/sens \
//
//	-settings bench/cache/spt/settings.json -out bench/RESULTS.md -figures bench/figures
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"log"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// meta is what run.sh writes beside each run's report.json.
type meta struct {
	Task   string `json:"task"`
	Method string `json:"method"` // linear, bitfit, lora-qv, adapter, full, spt-lora, spt-adapter, dora-qv, spt-dora
	Group  string `json:"group"`  // main | sweep
	Seed   int    `json:"seed"`
	Rank   int    `json:"rank"`
	Budget int64  `json:"budget"` // spt: the budget asked for
	LR     float64
}

// report is the part of sptctl tune's report.json used here.
type report struct {
	Strategy  string  `json:"strategy"`
	Type      string  `json:"type"`
	Backbone  int64   `json:"backbone_params"`
	Trainable int64   `json:"trainable"`
	Share     float64 `json:"trainable_share"`
	Before    float64 `json:"top1_before"`
	After     float64 `json:"top1_after"`
	Merged    float64 `json:"top1_merged"`
	Sidecar   float64 `json:"top1_sidecar"`
	TestN     int     `json:"test_n"`
	Plan      struct {
		Budget     int64    `json:"budget"`
		Structured []string `json:"structured"`
		Sparse     int64    `json:"sparse_entries"`
		Vectors    []string `json:"vectors"`
	} `json:"plan"`
	Train struct {
		Seconds   float64 `json:"seconds"`
		TrainTop1 float64 `json:"train_top1"`
		FinalLoss float64 `json:"final_loss"`
		Steps     int     `json:"steps"`
	} `json:"train"`
	Stages []struct {
		Stage   string  `json:"stage"`
		Seconds float64 `json:"seconds"`
	} `json:"stages"`
}

type run struct {
	meta
	report
	dir string
}

// trueBackbone is the backbone's parameter count from PyTorch (torch_sensitivity.py),
// when known; shares of the backbone are taken of it rather than of report.json's
// backbone_params (see the Checks section).
var trueBackbone int64

func (r run) share() float64 {
	if trueBackbone > 0 {
		return float64(r.Trainable) / float64(trueBackbone)
	}
	return r.Share
}

func (r run) seconds() float64 {
	s := 0.0
	for _, st := range r.Stages {
		s += st.Seconds
	}
	return s
}

// sensSummary is `sptctl sensitivity --json`.
type sensSummary struct {
	Summary struct {
		Top    float64     `json:"top"`
		Layers []string    `json:"layers"`
		Share  [][]float64 `json:"share"`
		Blocks []float64   `json:"blocks"`
		Kinds  []float64   `json:"kinds"`
		Total  int         `json:"sensitive"`
		Of     int         `json:"candidates"`
	} `json:"summary"`
}

// torchSens is bench/spt/torch_sensitivity.py's output: the same summary from PyTorch.
type torchSens struct {
	Own      float64   `json:"own_head_top1_upstream"`
	Backbone int64     `json:"backbone_params"` // PyTorch's count, without the head
	Top      float64   `json:"top"`
	Blocks   []float64 `json:"blocks"`
	Layers   []string  `json:"layers"`
	Kinds    []float64 `json:"kinds"`
}

// settings is what run.sh records about the protocol (bench/cache/spt/settings.json).
type settings struct {
	Command  string            `json:"command"`
	Model    string            `json:"model"`
	Epochs   int               `json:"epochs"`
	Batch    int               `json:"batch_size"`
	LR       float64           `json:"lr"`
	LRFull   float64           `json:"lr_full"`
	WD       float64           `json:"weight_decay"`
	Warmup   int               `json:"warmup"`
	Dropout  float64           `json:"dropout"`
	Train    string            `json:"train_split"`
	Seeds    []int             `json:"seeds"`
	Rank     int               `json:"rank"`
	AdRank   int               `json:"adapter_rank"`
	Sweeps   []string          `json:"sweep_tasks"`
	Ranks    []int             `json:"sweep_ranks"`
	Tasks    []string          `json:"tasks"`
	TaskDesc map[string]string `json:"task_desc"`
	Machine  string            `json:"machine"`
	Date     string            `json:"date"`
	Upstream string            `json:"upstream"`
	// Note, if set, says what this run covers (a partial rerun: which rows are
	// missing and where they are).
	Note string `json:"note,omitempty"`
}

var mainMethods = []string{"linear", "bitfit", "lora-qv", "adapter", "full", "spt-lora", "spt-adapter", "dora-qv", "spt-dora"}

var methodLabel = map[string]string{
	"linear":      "Linear probe",
	"bitfit":      "BitFit",
	"lora-qv":     "LoRA-qv",
	"adapter":     "Adapter (uniform)",
	"full":        "Full fine-tuning",
	"spt-lora":    "SPT-LoRA",
	"spt-adapter": "SPT-Adapter",
	"dora-qv":     "DoRA-qv",
	"spt-dora":    "SPT-DoRA",
}

func main() {
	runsDir := flag.String("runs", "bench/cache/spt/runs", "folder of runs (meta.json + report.json)")
	sensDir := flag.String("sens", "bench/cache/spt/sens", "folder of TASK.json sensitivity summaries")
	setFile := flag.String("settings", "bench/cache/spt/settings.json", "settings written by run.sh")
	out := flag.String("out", "bench/RESULTS.md", "markdown to write")
	figs := flag.String("figures", "bench/figures", "folder for the PNGs")
	flag.Parse()
	log.SetFlags(0)

	var set settings
	readJSON(*setFile, &set)
	runs := loadRuns(*runsDir)
	if len(runs) == 0 {
		log.Fatalf("no runs under %s", *runsDir)
	}
	if err := os.MkdirAll(*figs, 0o755); err != nil {
		log.Fatal(err)
	}
	sens := map[string]*sensSummary{}
	torch := map[string]*torchSens{}
	for _, t := range set.Tasks {
		p := filepath.Join(*sensDir, t+".json")
		if _, err := os.Stat(p); err == nil {
			s := &sensSummary{}
			readJSON(p, s)
			sens[t] = s
		}
		p = filepath.Join(*sensDir, t+".torch.json")
		if _, err := os.Stat(p); err == nil {
			s := &torchSens{}
			readJSON(p, s)
			torch[t] = s
		}
	}
	relFig := func(name string) string {
		rel, err := filepath.Rel(filepath.Dir(*out), filepath.Join(*figs, name))
		if err != nil {
			return filepath.Join(*figs, name)
		}
		return rel
	}
	var figures []string
	if len(sens) > 0 {
		check(plotSensitivity(filepath.Join(*figs, "spt-sensitivity.png"), set.Tasks, sens))
		figures = append(figures, "spt-sensitivity.png")
	}
	sweep := map[string][]sweepPoint{}
	for _, t := range set.Sweeps {
		if pts := sweepPoints(runs, t); len(pts) > 0 {
			sweep[t] = pts
		}
	}
	if len(sweep) > 0 {
		check(plotSweeps(filepath.Join(*figs, "spt-budget-sweep.png"), set, sweep))
		figures = append(figures, "spt-budget-sweep.png")
	}
	check(plotMain(filepath.Join(*figs, "spt-accuracy.png"), set.Tasks, runs))
	figures = append(figures, "spt-accuracy.png")

	for _, t := range set.Tasks {
		if ts := torch[t]; ts != nil && ts.Backbone > 0 {
			trueBackbone = ts.Backbone
		}
	}
	md := render(set, runs, sens, torch, sweep, relFig)
	check(os.WriteFile(*out, []byte(md), 0o644))
	log.Printf("wrote %s and %s", *out, strings.Join(figures, ", "))
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func readJSON(path string, v any) {
	b, err := os.ReadFile(path)
	check(err)
	if err := json.Unmarshal(b, v); err != nil {
		log.Fatalf("%s: %v", path, err)
	}
}

func loadRuns(dir string) []run {
	metas, err := filepath.Glob(filepath.Join(dir, "*", "*", "*", "meta.json"))
	check(err)
	var runs []run
	for _, m := range metas {
		d := filepath.Dir(m)
		if _, err := os.Stat(filepath.Join(d, "report.json")); err != nil {
			continue // not finished
		}
		var r run
		r.dir = d
		readJSON(m, &r.meta)
		readJSON(filepath.Join(d, "report.json"), &r.report)
		runs = append(runs, r)
	}
	return runs
}

// stat is the mean and sample standard deviation of xs.
type stat struct {
	Mean, Std float64
	N         int
}

func stats(xs []float64) stat {
	if len(xs) == 0 {
		return stat{Mean: math.NaN(), Std: math.NaN()}
	}
	m := 0.0
	for _, x := range xs {
		m += x
	}
	m /= float64(len(xs))
	v := 0.0
	for _, x := range xs {
		v += (x - m) * (x - m)
	}
	s := 0.0
	if len(xs) > 1 {
		s = math.Sqrt(v / float64(len(xs)-1))
	}
	return stat{m, s, len(xs)}
}

func (s stat) String() string {
	if s.N == 0 {
		return "—"
	}
	if s.N == 1 {
		return fmt.Sprintf("%.1f (1 seed)", s.Mean)
	}
	return fmt.Sprintf("%.1f ± %.1f", s.Mean, s.Std)
}

// pick returns the main runs of task and method, by seed.
func pick(runs []run, task, method string) map[int]run {
	m := map[int]run{}
	for _, r := range runs {
		if r.Group == "main" && r.Task == task && r.Method == method {
			m[r.Seed] = r
		}
	}
	return m
}

func top1s(rs map[int]run, merged bool) []float64 {
	seeds := sortedKeys(rs)
	xs := make([]float64, 0, len(seeds))
	for _, s := range seeds {
		x := rs[s].After
		if merged {
			x = rs[s].Merged
		}
		xs = append(xs, 100*x)
	}
	return xs
}

func sortedKeys[V any](m map[int]V) []int {
	ks := make([]int, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// trainable returns the (seed-independent, for all but SPT) trainable count of a
// method on a task: the mean over seeds, rounded.
func trainable(rs map[int]run) (int64, float64) {
	if len(rs) == 0 {
		return 0, 0
	}
	var n int64
	var share float64
	for _, r := range rs {
		n += r.Trainable
		share += r.share()
	}
	return n / int64(len(rs)), share / float64(len(rs))
}

// overall returns, per seed, the mean over tasks of a method's test top-1, and its
// stats over seeds; only seeds present on every task count.
func overall(runs []run, tasks []string, method string) stat {
	var per map[int][]float64 = map[int][]float64{}
	for _, t := range tasks {
		for s, r := range pick(runs, t, method) {
			per[s] = append(per[s], 100*r.After)
		}
	}
	var xs []float64
	for _, s := range sortedKeys(per) {
		if len(per[s]) == len(tasks) {
			m := 0.0
			for _, x := range per[s] {
				m += x
			}
			xs = append(xs, m/float64(len(tasks)))
		}
	}
	return stats(xs)
}

// sweepPoint is one budget of the sweep: LoRA-qv at a rank and SPT-LoRA at its count.
type sweepPoint struct {
	Rank             int
	QV, SPT          stat
	QVCount, SPTCnt  int64
	QVShare, SPTShre float64
}

func sweepPoints(runs []run, task string) []sweepPoint {
	byRank := map[int]map[string]map[int]run{}
	for _, r := range runs {
		if r.Task != task || r.Rank == 0 {
			continue
		}
		// the main LoRA-qv / SPT-LoRA runs are the sweep's rank-8 point
		if !(r.Group == "sweep" || r.Group == "main" && (r.Method == "lora-qv" || r.Method == "spt-lora")) {
			continue
		}
		if r.Method != "lora-qv" && r.Method != "spt-lora" {
			continue
		}
		if byRank[r.Rank] == nil {
			byRank[r.Rank] = map[string]map[int]run{}
		}
		if byRank[r.Rank][r.Method] == nil {
			byRank[r.Rank][r.Method] = map[int]run{}
		}
		byRank[r.Rank][r.Method][r.Seed] = r
	}
	var pts []sweepPoint
	for _, k := range sortedKeys(byRank) {
		qv, spt := byRank[k]["lora-qv"], byRank[k]["spt-lora"]
		if len(qv) == 0 || len(spt) == 0 {
			continue
		}
		p := sweepPoint{Rank: k, QV: stats(top1s(qv, false)), SPT: stats(top1s(spt, false))}
		p.QVCount, p.QVShare = trainable(qv)
		p.SPTCnt, p.SPTShre = trainable(spt)
		pts = append(pts, p)
	}
	return pts
}

// ---------- markdown ----------

func render(set settings, runs []run, sens map[string]*sensSummary, torch map[string]*torchSens, sweep map[string][]sweepPoint, fig func(string) string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# SPT benchmark: sensitivity-aware PEFT vs uniform baselines on a small ViT\n\n")
	p("Written by `bench/spt/run.sh` (do not edit by hand; rerun it). Reproduce with:\n\n")
	p("```\n%s\n```\n\n", set.Command)
	p("It carves the tasks into `bench/cache/spt/tasks/`, runs `sptctl tune --json` once per task × method × seed " +
		"into `bench/cache/spt/runs/` (a finished run, one with a report.json, is skipped on a rerun), scores " +
		"sensitivity per task, and runs `go run ./bench/spt` to write this file and the figures. " +
		"Numbers may move within the stated std on a rerun.\n\n")
	p("Machine: %s. Run finished %s.\n\n", set.Machine, set.Date)
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

	// ---- headline
	p("## Headline: mean test top-1 over the four tasks\n\n")
	p("Mean over tasks per seed, then mean ± std over the %d seeds. Trainable: mean over tasks (the head differs by class count).\n\n", len(set.Seeds))
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

	// ---- checks
	p("## Checks\n\n")
	worst, worstRun := 0.0, ""
	for _, r := range runs {
		if r.Type == "adapter" && strings.HasPrefix(r.Method, "spt") || r.Method == "adapter" {
			// adapters stay nodes: merged must still agree
		}
		if d := math.Abs(r.After - r.Merged); d > worst {
			worst, worstRun = d, r.dir
		}
	}
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
	return b.String()
}

func meanTrainable(runs []run, tasks []string, method string) int64 {
	var n int64
	k := 0
	for _, t := range tasks {
		if c, _ := trainable(pick(runs, t, method)); c > 0 {
			n += c
			k++
		}
	}
	if k == 0 {
		return 0
	}
	return n / int64(k)
}

func firstSens(m map[string]*sensSummary) *sensSummary {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return m[keys[0]]
}

func pcts(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", 100*x)
	}
	return strings.Join(s, " / ") + " %"
}

func backboneCount(runs []run) int64 {
	if trueBackbone > 0 {
		return trueBackbone
	}
	return backboneOf(runs)
}

func backboneOf(runs []run) int64 {
	for _, r := range runs {
		if r.Backbone > 0 {
			return r.Backbone
		}
	}
	return 0
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

// ---------- figures ----------

var palette = []color.Color{
	color.RGBA{31, 119, 180, 255}, color.RGBA{255, 127, 14, 255}, color.RGBA{44, 160, 44, 255},
	color.RGBA{214, 39, 40, 255}, color.RGBA{148, 103, 189, 255}, color.RGBA{140, 86, 75, 255},
	color.RGBA{227, 119, 194, 255},
}

func styled(p *plot.Plot) {
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.X.Label.TextStyle.Font.Size = vg.Points(11)
	p.Y.Label.TextStyle.Font.Size = vg.Points(11)
	p.X.Tick.Label.Font.Size = vg.Points(10)
	p.Y.Tick.Label.Font.Size = vg.Points(10)
	p.Legend.TextStyle.Font.Size = vg.Points(10)
}

// saveGrid draws plots in a rows × cols grid into one PNG.
func saveGrid(path string, plots [][]*plot.Plot, w, h vg.Length) error {
	img := vgimg.New(w, h)
	dc := draw.New(img)
	rows, cols := len(plots), len(plots[0])
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, t, dc)
	for i := range plots {
		for j := range plots[i] {
			if plots[i][j] != nil {
				plots[i][j].Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	png := vgimg.PngCanvas{Canvas: img}
	if _, err := png.WriteTo(f); err != nil {
		return err
	}
	return f.Close()
}

// plotSensitivity draws, per task, the share of sensitive entries by block depth
// (left column) and by layer type (right column); and one block × layer chart per task.
func plotSensitivity(path string, tasks []string, sens map[string]*sensSummary) error {
	var have []string
	for _, t := range tasks {
		if sens[t] != nil {
			have = append(have, t)
		}
	}
	// common y range per column so the tasks compare at a glance
	maxB, maxK := 0.0, 0.0
	for _, t := range have {
		for _, x := range sens[t].Summary.Blocks {
			maxB = max(maxB, 100*x)
		}
		for _, x := range sens[t].Summary.Kinds {
			maxK = max(maxK, 100*x)
		}
	}
	var grid [][]*plot.Plot
	for i, t := range have {
		s := sens[t].Summary
		bp := plot.New()
		styled(bp)
		bp.Title.Text = fmt.Sprintf("%s: by block depth", t)
		bp.Y.Label.Text = fmt.Sprintf("%% in top %.2g%%", 100*s.Top)
		vals := make(plotter.Values, len(s.Blocks))
		names := make([]string, len(s.Blocks))
		for b, x := range s.Blocks {
			vals[b], names[b] = 100*x, fmt.Sprint(b)
		}
		bars, err := plotter.NewBarChart(vals, vg.Points(22))
		if err != nil {
			return err
		}
		bars.Color, bars.LineStyle.Width = palette[i%len(palette)], 0
		bp.Add(bars)
		if err := addValueLabels(bp, vals, maxB); err != nil {
			return err
		}
		bp.NominalX(names...)
		if i == len(have)-1 {
			bp.X.Label.Text = "block (0 = nearest the input)"
		}
		bp.Y.Min, bp.Y.Max = 0, maxB*1.15

		kp := plot.New()
		styled(kp)
		kp.Title.Text = fmt.Sprintf("%s: by layer type", t)
		kvals := make(plotter.Values, len(s.Kinds))
		for k, x := range s.Kinds {
			kvals[k] = 100 * x
		}
		kb, err := plotter.NewBarChart(kvals, vg.Points(22))
		if err != nil {
			return err
		}
		kb.Color, kb.LineStyle.Width = palette[i%len(palette)], 0
		kp.Add(kb)
		if err := addValueLabels(kp, kvals, maxK); err != nil {
			return err
		}
		kp.NominalX(s.Layers...)
		if i == len(have)-1 {
			kp.X.Label.Text = "layer type (all blocks)"
		}
		kp.Y.Min, kp.Y.Max = 0, maxK*1.15
		grid = append(grid, []*plot.Plot{bp, kp})

		// per task: block × layer grouped bars
		if err := plotBlockLayer(strings.TrimSuffix(path, ".png")+"-"+t+".png", t, s.Top, s.Layers, s.Share); err != nil {
			return err
		}
	}
	return saveGrid(path, grid, 10*vg.Inch, vg.Length(2.6*float64(len(have)))*vg.Inch)
}

// addValueLabels writes each bar's value (in %, two decimals) just above it.
func addValueLabels(p *plot.Plot, vals plotter.Values, top float64) error {
	xys := make(plotter.XYs, len(vals))
	text := make([]string, len(vals))
	for i, v := range vals {
		xys[i].X, xys[i].Y = float64(i), v+0.03*top
		text[i] = fmt.Sprintf("%.2f", v)
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: text})
	if err != nil {
		return err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].XAlign = draw.XCenter
		l.TextStyle[i].Font.Size = vg.Points(9)
	}
	p.Add(l)
	return nil
}

func plotBlockLayer(path, task string, top float64, kinds []string, share [][]float64) error {
	p := plot.New()
	styled(p)
	p.Title.Text = fmt.Sprintf("%s: share of each layer's weights in the top %.2g%% most sensitive", task, 100*top)
	p.X.Label.Text = "block (depth)"
	p.Y.Label.Text = "% of the layer's weights"
	w := vg.Points(9)
	for j, k := range kinds {
		vals := make(plotter.Values, len(share))
		for b := range share {
			vals[b] = 100 * share[b][j]
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color, bars.LineStyle.Width = palette[j%len(palette)], 0
		bars.Offset = w * vg.Length(float64(j)-float64(len(kinds)-1)/2)
		p.Add(bars)
		p.Legend.Add(k, bars)
	}
	names := make([]string, len(share))
	for b := range names {
		names[b] = fmt.Sprint(b)
	}
	p.NominalX(names...)
	p.Legend.Top = true
	p.Y.Min = 0
	return p.Save(9*vg.Inch, 4*vg.Inch, path)
}

// plotSweeps draws one accuracy-vs-budget panel per sweep task, side by side.
func plotSweeps(path string, set settings, sweep map[string][]sweepPoint) error {
	var row []*plot.Plot
	for _, t := range set.Sweeps {
		if pts := sweep[t]; len(pts) > 0 {
			p, err := plotSweep(t, pts)
			if err != nil {
				return err
			}
			row = append(row, p)
		}
	}
	return saveGrid(path, [][]*plot.Plot{row}, vg.Length(7.5*float64(len(row)))*vg.Inch, 5*vg.Inch)
}

// plotSweep draws test top-1 against trainable parameters for LoRA-qv and SPT-LoRA.
func plotSweep(task string, pts []sweepPoint) (*plot.Plot, error) {
	p := plot.New()
	styled(p)
	seeds := fmt.Sprintf("mean ± std over %d seeds", pts[0].QV.N)
	if pts[0].QV.N == 1 {
		seeds = "1 seed"
	}
	p.Title.Text = fmt.Sprintf("%s: test top-1 vs trainable parameters (%s)", task, seeds)
	p.X.Label.Text = "trainable parameters (incl. head and class token), log scale"
	p.Y.Label.Text = "test top-1 (%)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = budgetTicks{pts}
	add := func(name string, c color.Color, get func(sweepPoint) (int64, stat), shape draw.GlyphDrawer) error {
		xys := make(plotter.XYs, len(pts))
		errs := make(plotter.YErrors, len(pts))
		for i, pt := range pts {
			n, s := get(pt)
			xys[i].X, xys[i].Y = float64(n), s.Mean
			errs[i].Low, errs[i].High = s.Std, s.Std
		}
		l, sc, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color, l.Width = c, vg.Points(2)
		sc.Color, sc.Shape, sc.Radius = c, shape, vg.Points(4)
		eb, err := plotter.NewYErrorBars(struct {
			plotter.XYs
			plotter.YErrors
		}{xys, errs})
		if err != nil {
			return err
		}
		eb.Color, eb.Width, eb.CapWidth = c, vg.Points(1.5), vg.Points(8)
		p.Add(l, sc, eb)
		p.Legend.Add(name, l, sc)
		return nil
	}
	ranks := make([]string, len(pts))
	for i, pt := range pts {
		ranks[i] = fmt.Sprint(pt.Rank)
	}
	if err := add("LoRA-qv (rank "+strings.Join(ranks, ", ")+")", palette[0], func(pt sweepPoint) (int64, stat) { return pt.QVCount, pt.QV }, draw.CircleGlyph{}); err != nil {
		return nil, err
	}
	if err := add("SPT-LoRA at the same count", palette[3], func(pt sweepPoint) (int64, stat) { return pt.SPTCnt, pt.SPT }, draw.TriangleGlyph{}); err != nil {
		return nil, err
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Millimeter*3, -vg.Millimeter*2
	p.Add(plotter.NewGrid())
	return p, nil
}

type budgetTicks struct{ pts []sweepPoint }

func (b budgetTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for _, pt := range b.pts {
		ts = append(ts, plot.Tick{Value: float64(pt.QVCount), Label: fmt.Sprintf("%s\nr=%d, %.1f%%", commas(pt.QVCount), pt.Rank, 100*pt.QVShare)})
	}
	return ts
}

// plotMain draws test top-1 per task (groups) and method (bars), mean ± std.
func plotMain(path string, tasks []string, runs []run) error {
	p := plot.New()
	styled(p)
	p.Title.Text = "test top-1 per task (mean ± std over seeds)"
	p.Y.Label.Text = "test top-1 (%)"
	w := vg.Points(16)
	lo := 100.0
	var methods []string
	for _, m := range mainMethods {
		for _, t := range tasks {
			if len(pick(runs, t, m)) > 0 {
				methods = append(methods, m)
				break
			}
		}
	}
	for j, m := range methods {
		vals := make(plotter.Values, len(tasks))
		errs := make(plotter.YErrors, len(tasks))
		for i, t := range tasks {
			s := stats(top1s(pick(runs, t, m), false))
			if s.N == 0 {
				s.Mean, s.Std = 0, 0
			}
			vals[i], errs[i] = s.Mean, struct{ Low, High float64 }{s.Std, s.Std}
			if s.N > 0 {
				lo = min(lo, s.Mean-s.Std)
			}
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color, bars.LineStyle.Width = palette[j%len(palette)], 0
		bars.Offset = w * vg.Length(float64(j)-float64(len(methods)-1)/2)
		p.Add(bars)
		p.Legend.Add(methodLabel[m], bars)
		// error bars at the bar centres
		xys := make(plotter.XYs, len(tasks))
		for i := range tasks {
			xys[i].X, xys[i].Y = float64(i), vals[i]
		}
		eb, err := plotter.NewYErrorBars(struct {
			plotter.XYs
			plotter.YErrors
		}{xys, errs})
		if err != nil {
			return err
		}
		eb.CapWidth = vg.Points(4)
		off := w * vg.Length(float64(j)-float64(len(methods)-1)/2)
		p.Add(offsetErr{eb, off})
	}
	p.NominalX(tasks...)
	p.Y.Min = math.Max(0, math.Floor(lo/10)*10-5)
	p.Y.Max = 100
	p.Add(plotter.NewGrid())
	// the legend goes in a column to the right of the axes
	leg := p.Legend
	p.Legend = plot.NewLegend()
	W, H := 12*vg.Inch, 5*vg.Inch
	img := vgimg.New(W, H)
	dc := draw.New(img)
	legW := 1.9 * vg.Inch
	p.Draw(draw.Crop(dc, 0, -legW, 0, 0))
	leg.Top, leg.Left = true, true
	leg.YOffs = -0.5 * vg.Inch
	leg.Draw(draw.Crop(dc, W-legW+vg.Millimeter*3, 0, 0, 0))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return err
	}
	return f.Close()
}

// offsetErr draws error bars shifted horizontally by off (to sit on a grouped bar).
type offsetErr struct {
	*plotter.YErrorBars
	off vg.Length
}

func (o offsetErr) Plot(c draw.Canvas, p *plot.Plot) {
	c.Rectangle.Min.X += o.off
	c.Rectangle.Max.X += o.off
	o.YErrorBars.Plot(c, p)
}
