// Command spt turns the runs of the SPT benchmark (bench/spt/run.sh) into
// bench/RESULTS.md and the figures under bench/figures/.
//
// It reads every RUN/meta.json + RUN/report.json under -runs (the fp32 suite) and
// -runs-bf16 (the same suite trained with `tune --precision bf16`) (one `sptctl tune`
// run each; meta.json is written by run.sh and says which task, method, seed and group
// the run belongs to) and every TASK.json under -sens (`sptctl sensitivity --json`),
// and writes the tables, the conclusions (computed from the numbers, so a rerun
// rewrites them consistently) and the PNGs. The tables come from the fp32 suite, or
// from the bf16 one while the fp32 suite has no runs; with both, a section compares
// them.
//
// Usage: go run ./bench/spt -runs bench/cache/spt/runs -runs-bf16 bench/cache/spt/runs-bf16 \
//
//	-sens bench/cache/spt/sens -settings bench/cache/spt/settings.json -out bench/RESULTS.md \
//	-figures bench/figures
package main

import (
	"flag"
	"log"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	runsDir := flag.String("runs", "bench/cache/spt/runs", "folder of the fp32 suite's runs (meta.json + report.json); missing or empty: none")
	bf16Dir := flag.String("runs-bf16", "bench/cache/spt/runs-bf16", "folder of the bf16 suite's runs (tune --precision bf16); missing or empty: none")
	sensDir := flag.String("sens", "bench/cache/spt/sens", "folder of TASK.json sensitivity summaries")
	setFile := flag.String("settings", "bench/cache/spt/settings.json", "settings written by run.sh")
	out := flag.String("out", "bench/RESULTS.md", "markdown to write")
	figs := flag.String("figures", "bench/figures", "folder for the PNGs")
	flag.Parse()
	log.SetFlags(0)

	var set settings
	readJSON(*setFile, &set)
	ss := suites{
		fp32: suite{Precision: "fp32", Dir: *runsDir, Runs: loadRuns(*runsDir)},
		bf16: suite{Precision: "bf16", Dir: *bf16Dir, Runs: loadRuns(*bf16Dir)},
	}
	if len(ss.fp32.Runs) == 0 && len(ss.bf16.Runs) == 0 {
		log.Fatalf("no finished runs under -runs %s nor -runs-bf16 %s", *runsDir, *bf16Dir)
	}
	runs := ss.primary().Runs
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
	check(plotMain(filepath.Join(*figs, "spt-accuracy.png"), set.Tasks, runs, ss.primary().Precision))
	figures = append(figures, "spt-accuracy.png")

	for _, t := range set.Tasks {
		if ts := torch[t]; ts != nil && ts.Backbone > 0 {
			trueBackbone = ts.Backbone
		}
	}
	md := render(set, ss, sens, torch, sweep, relFig)
	check(os.WriteFile(*out, []byte(md), 0o644))
	log.Printf("wrote %s and %s", *out, strings.Join(figures, ", "))
}
