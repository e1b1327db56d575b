package torch

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestStartProfileCountsOperators runs three matrix products and an addition under
// the profiler and checks the written table: one row per operator and input shapes,
// with its call count and times.
func TestStartProfileCountsOperators(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ops.tsv")
	smokeRun(t, func() error {
		a, err := smokeTensor(iota32(12), 3, 4)
		if err != nil {
			return err
		}
		defer a.MustDrop()
		b, err := smokeTensor(iota32(20), 4, 5)
		if err != nil {
			return err
		}
		defer b.MustDrop()
		stop, err := StartProfile(path)
		if err != nil {
			return err
		}
		for i := 0; i < 3; i++ {
			c, err := a.Mm(b, false)
			if err != nil {
				return err
			}
			d, err := c.Add(c, true)
			if err != nil {
				return err
			}
			d.MustDrop()
		}
		if err := stop(); err != nil {
			return err
		}
		return stop() // a second stop does nothing
	})
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if lines[0] != "self_ms\ttotal_ms\tcalls\top\tinput_shapes" {
		t.Fatalf("header %q", lines[0])
	}
	found := map[string]int{}
	for _, l := range lines[1:] {
		f := strings.Split(l, "\t")
		if len(f) != 5 {
			t.Fatalf("row %q: %d fields, want 5", l, len(f))
		}
		self, err1 := strconv.ParseFloat(f[0], 64)
		total, err2 := strconv.ParseFloat(f[1], 64)
		calls, err3 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || err3 != nil || self < 0 || total < self-1e-6 || calls < 1 {
			t.Fatalf("row %q: bad numbers", l)
		}
		found[f[3]+" "+f[4]] = calls
	}
	if got := found["aten::mm [[3, 4], [4, 5]]"]; got != 3 {
		t.Errorf("aten::mm [[3, 4], [4, 5]]: %d calls, want 3 (rows %v)", got, found)
	}
	if got := found["aten::add [[3, 5], [3, 5], []]"]; got != 3 {
		t.Errorf("aten::add [[3, 5], [3, 5], []]: %d calls, want 3 (rows %v)", got, found)
	}
}

func TestStartProfileUnwritablePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "ops.tsv")
	err := smokeOnTorchThread(func() error {
		_, err := StartProfile(path)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v, want one naming %s", err, path)
	}
}
