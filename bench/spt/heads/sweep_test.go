package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSweepReport writes the sweep file from a hand-made cache and checks its numbers
// against ones worked out by hand.
func TestSweepReport(t *testing.T) {
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	put := func(task, name string, trainable int64, top1 ...float64) {
		for s, x := range top1 {
			d := filepath.Join(runs, task, name, fmt.Sprintf("seed%d", s))
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			b := fmt.Sprintf(`{"trainable": %d, "top1_before": 0.2, "top1_after": %g}`, trainable, x)
			if err := os.WriteFile(filepath.Join(d, "report.json"), []byte(b), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	put("a", "lora-qv", 19000, 0.80, 0.82)
	put("b", "lora-qv", 19000, 0.70, 0.72)
	put("a", "lora-qv-head-probe", 19000, 0.83, 0.83)
	put("b", "lora-qv-head-probe", 19000, 0.71, 0.75)
	put("a", "spt-lora-head-probe", 19000, 0.85, 0.86)
	put("b", "spt-lora-head-probe", 19000, 0.74, 0.75)
	put("a", "lora-qv-r4", 10000, 0.78, 0.80)
	put("a", "spt-lora-r4", 10000, 0.80, 0.80)
	put("a", "spt-lora-r4-head-probe", 10000, 0.81, 0.83)
	put("a", "spt-lora", 19000, 0.81) // one seed of two
	st := settings{Command: "SWEEP_ONLY=1 bench/spt/heads.sh", Rank: 8, Seeds: []int{0, 1}, Tasks: []string{"a", "b"},
		Heads: []string{"random", "probe"}, SweepTasks: []string{"a"}, SweepRanks: []int{4, 8}, SweepSeeds: []int{0, 1}, SweepOnly: true}
	out := filepath.Join(dir, "sweep.md")
	if err := sweepReport(runs, st, out, filepath.Join(dir, "figures")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	// Per-seed means over a and b: LoRA-qv 75, 77; from the probe 77, 79; SPT-LoRA 79.5, 80.5.
	for _, want := range []string{
		"by **+4.0 ± 0.7** points",      // SPT-LoRA probe − LoRA-qv: 4.5, 3.5
		"**+2.0 ± 0.0** is the start",   // 2, 2
		"**+2.0 ± 0.7** the allocation", // 2.5, 1.5
		"| a | 81.0 ± 1.4 | 83.0 ± 0.0 | 85.5 ± 0.7 | +2.0 ± 1.4 | +2.5 ± 0.7 | 20.0 / 20.0 |",
		"| 4 | 10,000 | 79.0 ± 1.4 | 80.0 ± 0.0 | 82.0 ± 1.4 | +1.0 ± 1.4 | +3.0 ± 0.0 |",
		"| 8 | 19,000 | 81.0 ± 1.4 | 81.0 (1 of 2 seeds) | 85.5 ± 0.7 | +1.0 (1 seed) | +4.5 ± 0.7 |",
		"| 4 | +1.0 (1 of 2 positive) | +3.0 (2 of 2 positive) |",
		"| 8 | +1.0 (1 of 1 positive) | +4.5 (2 of 2 positive) |",
		"sweep-heads-a.png",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks %q:\n%s", want, md)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "figures", "sweep-heads-a.png")); err != nil {
		t.Error(err)
	}
}
