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
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.count=1")
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

// The probe's child keeps the main goroutine on the process's first thread, whose
// allocations come from glibc's main arena (the one the trim threshold governs;
// another thread's arena is made of 64 MiB heaps trimmed by other rules).
func init() {
	if os.Getenv("OSMEM_PROBE") != "" {
		runtime.LockOSThread()
	}
}

// TestMain runs the probe's scenario in its child process (on the first thread, see
// init) and the tests otherwise.
func TestMain(m *testing.M) {
	scenario := os.Getenv("OSMEM_PROBE")
	if scenario == "" {
		os.Exit(m.Run())
	}
	var changed bool
	switch scenario {
	case "fix":
		changed = FixThresholds()
	case "map":
		changed = MapLargeAllocs(1 << 20)
	case "keep":
		changed = FixThresholds()
		KeepFreedHeap()
	case "restore":
		changed = FixThresholds()
		KeepFreedHeap()()
	default:
		fmt.Fprintf(os.Stderr, "unknown scenario %q\n", scenario)
		os.Exit(2)
	}
	fmt.Printf("probe: changed=%v mapped=%v kept=%v\n", changed, mappedBlockWith(4<<20), heapKeptAfterFree(48, 4<<20))
	os.Exit(0)
}

// TestThresholdsDecideMapping: with FixThresholds a 4 MiB block comes from the heap
// (glibc's default would map it); with MapLargeAllocs(1 MiB) it is a mapping of its
// own.
func TestThresholdsDecideMapping(t *testing.T) {
	if got := probe(t, "fix"); !strings.HasPrefix(got, "changed=true mapped=false ") {
		t.Errorf("FixThresholds: %s, want changed=true mapped=false", got)
	}
	if got := probe(t, "map"); !strings.HasPrefix(got, "changed=true mapped=true ") {
		t.Errorf("MapLargeAllocs: %s, want changed=true mapped=true", got)
	}
}

// TestEnvironmentWins: with any of glibc's malloc variables set the thresholds are
// left as they are; with MALLOC_MMAP_THRESHOLD_ at 64 MiB a 4 MiB block stays in the
// heap after MapLargeAllocs(1 MiB).
func TestEnvironmentWins(t *testing.T) {
	if got := probe(t, "map", "MALLOC_MMAP_THRESHOLD_=67108864"); !strings.HasPrefix(got, "changed=false mapped=false ") {
		t.Errorf("MapLargeAllocs under MALLOC_MMAP_THRESHOLD_=64 MiB: %s, want changed=false mapped=false", got)
	}
	for _, kv := range []string{"MALLOC_TRIM_THRESHOLD_=134217728", "MALLOC_TOP_PAD_=131072", "GLIBC_TUNABLES=glibc.malloc.check=0"} {
		// glibc's default threshold (128 KiB) maps a 4 MiB block.
		if got := probe(t, "fix", kv); !strings.HasPrefix(got, "changed=false mapped=true ") {
			t.Errorf("FixThresholds under %s: %s, want changed=false mapped=true", kv, got)
		}
	}
}

// TestHeapKeptBetweenSteps: after KeepFreedHeap the heap keeps the room of 192 MiB
// of freed blocks (a training step's activations, freed by its backward, are needed
// again by the next forward); with FixThresholds' 128 MiB trim threshold, and again
// once KeepFreedHeap's restore ran, glibc gives that room back as the blocks are freed.
func TestHeapKeptBetweenSteps(t *testing.T) {
	for _, c := range []struct{ scenario, want string }{
		{"keep", "changed=true mapped=false kept=true"},
		{"fix", "changed=true mapped=false kept=false"},
		{"restore", "changed=true mapped=false kept=false"},
	} {
		if got := probe(t, c.scenario); got != c.want {
			t.Errorf("%s: %s, want %s", c.scenario, got, c.want)
		}
	}
	// The environment wins: with MALLOC_TRIM_THRESHOLD_ set, KeepFreedHeap leaves it.
	if got := probe(t, "keep", "MALLOC_TRIM_THRESHOLD_=1048576", "MALLOC_MMAP_THRESHOLD_=33554432"); got != "changed=false mapped=false kept=false" {
		t.Errorf("keep under MALLOC_TRIM_THRESHOLD_=1 MiB: %s, want changed=false mapped=false kept=false", got)
	}
}
