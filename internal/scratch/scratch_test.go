package scratch

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestClean(t *testing.T) {
	dir := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	live := exec.Command("sleep", "60")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { live.Process.Kill(); live.Wait() }()
	const p = ".x.tmp-"
	entries := map[string]bool{ // name: removed by Clean
		fmt.Sprintf("%s%d-1", p, dead.Process.Pid):     true,
		fmt.Sprintf("%s%d-2", p, live.Process.Pid):     false,
		fmt.Sprintf("%s%d-3", p, os.Getpid()):          false,
		fmt.Sprintf("%s%d-4.png", p, dead.Process.Pid): true,
		fmt.Sprintf(".y.tmp-%d-5", dead.Process.Pid):   false, // another prefix
		p + "123456": true,  // legacy, old
		p + "654321": false, // legacy, new
		"x":          false,
		fmt.Sprintf("%s%d-6/inside", p, dead.Process.Pid): true, // a folder
	}
	for name := range entries {
		path := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(filepath.Join(dir, p+"123456"), old, old)
	Clean(dir, p)
	for name, gone := range entries {
		_, err := os.Stat(filepath.Join(dir, name))
		if gone && err == nil {
			t.Errorf("%s is still there", name)
		}
		if !gone && err != nil {
			t.Errorf("%s was removed", name)
		}
	}
	// New entries carry this process's id and survive a Clean.
	f, err := CreateFile(dir, p, ".png")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	d, err := Mkdir(dir, p)
	if err != nil {
		t.Fatal(err)
	}
	Clean(dir, p)
	for _, n := range []string{f.Name(), d} {
		if _, err := os.Stat(n); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	if filepath.Ext(f.Name()) != ".png" {
		t.Errorf("%s: suffix lost", f.Name())
	}
}
