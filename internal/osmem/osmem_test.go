package osmem

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// rss is the process's resident set in bytes (Linux).
func rss(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status:", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Skip("no VmRSS")
	return 0
}

// TestReleaseGivesBackGoMemory: 256 MB allocated, touched and dropped are no longer
// resident after Release.
func TestReleaseGivesBackGoMemory(t *testing.T) {
	const size = 256 << 20
	before := rss(t)
	b := make([]byte, size)
	for i := range b {
		b[i] = 1
	}
	runtime.KeepAlive(b)
	if during := rss(t); during-before < size/2 {
		t.Skipf("RSS grew by %d MB only for a %d MB buffer: cannot measure here", (during-before)>>20, size>>20)
	}
	b = nil
	Release()
	if after := rss(t); after-before > size/4 {
		t.Errorf("after Release RSS is %d MB above where it started (buffer: %d MB)", (after-before)>>20, size>>20)
	}
}

var mallocVars = []string{"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"}

// probe runs scenario in a fresh test process (glibc's heap still small, so the mmap
// threshold decides where a block comes from) with env added to a copy of this
// process's environment less glibc's malloc variables, and returns what it printed.
func probe(t *testing.T, scenario string, env ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProbeChild$", "-test.count=1")
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(mallocVars, k) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, append(env, "OSMEM_PROBE="+scenario)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("probe %s: %v\n%s", scenario, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if r, ok := strings.CutPrefix(l, "probe: "); ok {
			return r
		}
	}
	t.Fatalf("probe %s printed no result:\n%s", scenario, out)
	return ""
}

// TestProbeChild is the child process of probe (skipped otherwise).
func TestProbeChild(t *testing.T) {
	scenario := os.Getenv("OSMEM_PROBE")
	if scenario == "" {
		t.Skip("run by probe only")
	}
	var changed bool
	switch scenario {
	case "fix":
		changed = FixThresholds()
	case "map":
		changed = MapLargeAllocs(1 << 20)
	default:
		t.Fatalf("unknown scenario %q", scenario)
	}
	fmt.Printf("probe: changed=%v mapped=%v\n", changed, mappedBlockWith(4<<20))
}

// TestThresholdsDecideMapping: with FixThresholds a 4 MiB block comes from the heap
// (glibc's default would map it); with MapLargeAllocs(1 MiB) it is a mapping of its
// own.
func TestThresholdsDecideMapping(t *testing.T) {
	if got := probe(t, "fix"); got != "changed=true mapped=false" {
		t.Errorf("FixThresholds: %s, want changed=true mapped=false", got)
	}
	if got := probe(t, "map"); got != "changed=true mapped=true" {
		t.Errorf("MapLargeAllocs: %s, want changed=true mapped=true", got)
	}
}

// TestEnvironmentWins: with any of glibc's malloc variables set the thresholds are
// left as they are; with MALLOC_MMAP_THRESHOLD_ at 64 MiB a 4 MiB block stays in the
// heap after MapLargeAllocs(1 MiB).
func TestEnvironmentWins(t *testing.T) {
	if got := probe(t, "map", "MALLOC_MMAP_THRESHOLD_=67108864"); got != "changed=false mapped=false" {
		t.Errorf("MapLargeAllocs under MALLOC_MMAP_THRESHOLD_=64 MiB: %s, want changed=false mapped=false", got)
	}
	for _, kv := range []string{"MALLOC_TRIM_THRESHOLD_=134217728", "MALLOC_TOP_PAD_=131072", "GLIBC_TUNABLES=glibc.malloc.check=0"} {
		// glibc's default threshold (128 KiB) maps a 4 MiB block.
		if got := probe(t, "fix", kv); got != "changed=false mapped=true" {
			t.Errorf("FixThresholds under %s: %s, want changed=false mapped=true", kv, got)
		}
	}
}
