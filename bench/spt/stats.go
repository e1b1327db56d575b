package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

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
