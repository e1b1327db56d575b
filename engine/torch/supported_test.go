package torch

import (
	"slices"
	"testing"

	"github.com/sptctl/sptctl/engine"
)

// The pure-Go list that inspect and allocate check models against is exactly the set
// of ops this executor runs.
func TestSupportedOpsMatchEngine(t *testing.T) {
	if got, want := SupportedOps(), engine.SupportedOps(); !slices.Equal(got, want) {
		t.Fatalf("engine/torch runs %v,\nengine.SupportedOps lists %v", got, want)
	}
}
