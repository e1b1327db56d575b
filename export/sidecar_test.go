package export_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/ortcheck"
)

func inode(t *testing.T, path string) (uint64, int64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime().UnixNano()
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestSidecarTwoTasks exports two tasks against one base on every fixture: base.data
// is written by the first and reused untouched by the second, and both task models
// run in ONNX Runtime and give their trained models' outputs.
func TestSidecarTwoTasks(t *testing.T) {
	ortcheck.Init(t)
	tmp := t.TempDir()
	for _, path := range fixture.Paths(t) {
		name := fixture.Name(path)
		t.Run(name, func(t *testing.T) {
			base := fixture.Load(t, path)
			batch := base.V.Batch
			if batch == 0 {
				batch = 2
			}
			x := ortcheck.Input(t, path, batch)
			dir := filepath.Join(tmp, name, "sidecar")
			os.MkdirAll(filepath.Join(tmp, name), 0o755)
			ps := plans(t, base)
			tasks := []struct {
				task, plan string
				seed       uint64
			}{{"lora", "lora", 1}, {"mixed", "hand_adapter", 2}}
			var ino uint64
			var mtime int64
			var baseBytes []byte
			for i, tk := range tasks {
				tm := trained(t, base.M, ps[tk.plan], false, tk.seed)
				want := ortcheck.Run(t, fixture.Save(t, tm, filepath.Join(tmp, name, tk.task+"_trained.onnx")), x)
				verified := false
				rep, err := export.SidecarWith(tm, base.M, dir, tk.task, export.SidecarOptions{Verify: func(p string) error {
					verified = true
					got := ortcheck.Run(t, p, x)
					if r := fixture.RelDiff(got, want); r > 1e-5 {
						t.Errorf("%s: staged sidecar vs trained: relative difference %.3g", tk.task, r)
					}
					return nil
				}})
				if err != nil {
					t.Fatalf("%s: %v", tk.task, err)
				}
				if !verified {
					t.Errorf("%s: Verify was not called", tk.task)
				}
				if rep.BaseWritten != (i == 0) {
					t.Errorf("%s: base written %v", tk.task, rep.BaseWritten)
				}
				got := ortcheck.Run(t, filepath.Join(dir, tk.task+".onnx"), x)
				if r := fixture.RelDiff(got, want); r > 1e-5 {
					t.Errorf("%s: sidecar vs trained: relative difference %.3g", tk.task, r)
				}
				b, err := os.ReadFile(filepath.Join(dir, export.BaseData))
				if err != nil {
					t.Fatal(err)
				}
				in, mt := inode(t, filepath.Join(dir, export.BaseData))
				if i == 0 {
					ino, mtime, baseBytes = in, mt, b
				} else if in != ino || mt != mtime || !bytes.Equal(b, baseBytes) {
					t.Errorf("%s: base.data was rewritten (inode %d→%d, mtime %d→%d, same bytes %v)", tk.task, ino, in, mtime, mt, bytes.Equal(b, baseBytes))
				}
				fi, _ := os.Stat(path)
				t.Logf("%s: base.onnx %d B; base.data %d B; %s.onnx %d B + %s.data %d B (%d task tensors, %d values) = %.1f%% of base.data",
					tk.task, fi.Size(), rep.BaseBytes, tk.task, rep.ModelBytes, tk.task, rep.TaskBytes, rep.TaskTensors, rep.TaskParams,
					100*float64(rep.ModelBytes+rep.TaskBytes)/float64(rep.BaseBytes))
			}
			want := []string{"base.data", "base.json", "lora.data", "lora.onnx", "mixed.data", "mixed.onnx"}
			if got := listDir(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("folder holds %v, want %v", got, want)
			}
		})
	}
}

// TestSidecarRefuses: a base.data of another base, a changed base.data, a failed
// verification, a model never injected, a bad task name: errors, nothing written.
func TestSidecarRefuses(t *testing.T) {
	fs := fixture.Paths(t)
	base, other := fixture.Load(t, fs[0]), fixture.Load(t, fs[1])
	tm := trained(t, base.M, plans(t, base)["lora"], false, 1)
	om := trained(t, other.M, plans(t, other)["lora"], false, 1)
	tmp := t.TempDir()

	// A folder holding another base's sidecar.
	dir := filepath.Join(tmp, "other")
	if _, err := export.Sidecar(om, other.M, dir, "a"); err != nil {
		t.Fatal(err)
	}
	before := listDir(t, dir)
	if _, err := export.Sidecar(tm, base.M, dir, "b"); err == nil || !strings.Contains(err.Error(), "belongs to another base") {
		t.Errorf("another base's base.data: %v", err)
	}
	// Without base.json the bytes decide.
	os.Remove(filepath.Join(dir, export.BaseJSON))
	if _, err := export.Sidecar(tm, base.M, dir, "b"); err == nil || !strings.Contains(err.Error(), "another base") {
		t.Errorf("another base's base.data, no base.json: %v", err)
	}
	if got := listDir(t, dir); len(got) != len(before)-1 {
		t.Errorf("folder changed: %v (before %v)", got, before)
	}

	// A base.data changed in one byte.
	dir = filepath.Join(tmp, "changed")
	if _, err := export.Sidecar(tm, base.M, dir, "a"); err != nil {
		t.Fatal(err)
	}
	bp := filepath.Join(dir, export.BaseData)
	b, _ := os.ReadFile(bp)
	b[len(b)/2] ^= 1
	os.WriteFile(bp, b, 0o644)
	if _, err := export.Sidecar(tm, base.M, dir, "b"); err == nil || !strings.Contains(err.Error(), "byte for byte") {
		t.Errorf("changed base.data: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b.onnx")); err == nil {
		t.Error("b.onnx written")
	}

	// Verification fails: nothing at all, not even the folder.
	dir = filepath.Join(tmp, "new", "deeper")
	boom := errors.New("parity check failed")
	if _, err := export.SidecarWith(tm, base.M, dir, "a", export.SidecarOptions{Verify: func(string) error { return boom }}); !errors.Is(err, boom) {
		t.Errorf("failed verify: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("folder left behind: %v %v", err, listDir(t, dir))
	}

	// Not injected; bad names.
	dir = filepath.Join(tmp, "x")
	if _, err := export.Sidecar(base.M, base.M, dir, "a"); err == nil || !strings.Contains(err.Error(), "not made by `sptctl inject`") {
		t.Errorf("base model as task: %v", err)
	}
	for _, name := range []string{"", "../a", "a/b", "base", ".hidden"} {
		if _, err := export.Sidecar(tm, base.M, dir, name); err == nil {
			t.Errorf("task name %q accepted", name)
		}
	}
	if _, err := export.Sidecar(tm, other.M, dir, "a"); err == nil || !strings.Contains(err.Error(), "not the one") {
		t.Errorf("wrong base: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("folder written: %v", listDir(t, dir))
	}
}
