package main

import (
	"encoding/json"
	"log"
	"os"
	"path/filepath"
	"time"
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
		Precision string  `json:"precision"` // the training precision tune used (fp32, bf16)
	} `json:"train"`
	Stages []struct {
		Stage   string  `json:"stage"`
		Seconds float64 `json:"seconds"`
	} `json:"stages"`
}

type run struct {
	meta
	report
	dir        string
	start, end time.Time // meta.json's and report.json's modification times
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
		fi, err := os.Stat(filepath.Join(d, "report.json"))
		if err != nil {
			continue // not finished
		}
		var r run
		r.dir = d
		// run.sh writes meta.json just before `sptctl tune` starts and tune writes
		// report.json when it ends: their times bound the run in wall-clock time
		r.end = fi.ModTime()
		if mi, err := os.Stat(m); err == nil {
			r.start = mi.ModTime()
		}
		readJSON(m, &r.meta)
		readJSON(filepath.Join(d, "report.json"), &r.report)
		runs = append(runs, r)
	}
	return runs
}

// suite is one precision's runs of the benchmark.
type suite struct {
	Precision string // fp32 | bf16
	Dir       string
	Runs      []run
}

// suites are the fp32 suite (-runs) and the bf16 one (-runs-bf16); either may be empty.
type suites struct{ fp32, bf16 suite }

// primary is the suite the tables and figures show: fp32 when it has runs, else bf16.
func (s suites) primary() suite {
	if len(s.fp32.Runs) > 0 {
		return s.fp32
	}
	return s.bf16
}
