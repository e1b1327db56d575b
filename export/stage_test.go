package export

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sptctl/sptctl/onnxio"
)

// TestStaleStagingFoldersRemoved: the staging folder of an export killed with -9 is
// removed by the next export into the same folder; a live process's is kept.
func TestStaleStagingFoldersRemoved(t *testing.T) {
	m, err := onnxio.Load("../testdata/tv_op17_dynamic.onnx")
	if err != nil {
		t.Fatal(err)
	}
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
	stale := filepath.Join(dir, fmt.Sprintf("%s%d-1", StagePrefix, dead.Process.Pid))
	busy := filepath.Join(dir, fmt.Sprintf("%s%d-2", StagePrefix, live.Process.Pid))
	for _, d := range []string{stale, busy} {
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "merged.onnx"), []byte("half"), 0o644)
	}
	if err := SaveVerified(filepath.Join(dir, "merged.onnx"), m, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("the killed export's staging folder is still there")
	}
	if _, err := os.Stat(busy); err != nil {
		t.Errorf("a running export's staging folder was removed: %v", err)
	}
	es, _ := os.ReadDir(dir)
	if len(es) != 2 {
		t.Errorf("%d entries, want merged.onnx and the running export's folder", len(es))
	}
}
