package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/sensitivity"
)

// defaultHead is the scoring head when --head is not given: the fitted probe. On the
// SPT suite (bench/RESULTS-sensitivity.md) it picks the same top-1% entries for any head
// seed (overlap 0.96 vs 0.57 for the paper's random head) and SPT-LoRA gains +1.6 ± 0.4
// points over LoRA-qv against the random head's +0.9 ± 0.6. `--head random` is the
// paper's rule, kept for comparison.
const defaultHead = inject.HeadProbe

// maxHeadSeeds bounds --head-seeds (each head is one more scoring pass).
const maxHeadSeeds = 64

const headHelp = "--head picks the head the gradients flow through:\n" +
	"  probe      (default) a linear probe fitted first: AdamW on the head alone, on the\n" +
	"             features of up to 4096 images of the split (one forward pass, cached),\n" +
	"             seeded by --head-seed; inject starts from it\n" +
	"  random     a fresh head seeded by --head-seed (the SPT paper's rule); --head-seeds K\n" +
	"             averages the scores of K such heads (seeds derived from --head-seed);\n" +
	"             --head-seeds K > 1 without --head means --head random\n" +
	"  zero-mean  the centred class-mean head (row c: mean feature of class c minus the mean\n" +
	"             of all; the bias makes it the nearest-class-mean classifier); computed,\n" +
	"             no seed; inject starts from it\n" +
	"The score file's metadata records the choice; allocate copies it into the plan."

// scoringHead is the head --head and --head-seeds ask for: averaging several heads
// is for random heads only, so --head-seeds K > 1 without --head means random.
func scoringHead(c *cli.Context) string {
	if !c.IsSet("head") && c.Int("head-seeds") > 1 {
		return inject.HeadRandom
	}
	return c.String("head")
}

// checkHead checks --head and --head-seeds.
func checkHead(c *cli.Context) error {
	head, seeds := scoringHead(c), c.Int("head-seeds")
	switch head {
	case inject.HeadRandom:
	case inject.HeadProbe, inject.HeadZeroMean:
		if seeds > 1 {
			return usagef("--head-seeds %d: averaging is for --head random, not %s", seeds, head)
		}
	default:
		return usagef("--head %q: want random, probe or zero-mean", head)
	}
	if seeds < 1 || seeds > maxHeadSeeds {
		return usagef("--head-seeds %d: want 1 to %d", seeds, maxHeadSeeds)
	}
	return nil
}

// headNote says which head scores were taken with, for the "wrote" line.
func headNote(info sensitivity.Info) string {
	switch {
	case info.HeadValues != nil:
		return fmt.Sprintf("; %s head, top-1 %.1f%% on the %d images it was made from", info.Head, 100*info.HeadTop1, info.HeadExamples)
	case info.HeadSeeds > 1:
		return fmt.Sprintf("; mean of %d random heads", info.HeadSeeds)
	}
	return ""
}
