package osmem

import (
	"os"
	"runtime"
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
