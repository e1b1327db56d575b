package inject

import (
	"fmt"
	"math"
	"slices"
)

// Scoring heads: the head sensitivity scored the weights through, recorded in the
// score file and the plan.
const (
	HeadRandom   = "random"    // HeadInit(seed): the SPT paper's fresh, untrained head
	HeadProbe    = "probe"     // a linear probe fitted on the scoring split's features
	HeadZeroMean = "zero-mean" // the centred class means of the features (computed, not trained)
)

// HeadValues are a new head's starting values when they are not HeadInit's: the head
// sensitivity fitted or computed and scored through, so that training starts where
// scoring looked.
type HeadValues struct {
	Weight []float32 `json:"weight"` // [classes, in], row-major
	Bias   []float32 `json:"bias"`   // [classes]
}

// check reports whether v fits a head of classes outputs on in features.
func (v *HeadValues) check(in, classes int) error {
	if len(v.Weight) != in*classes || len(v.Bias) != classes {
		return fmt.Errorf("plan head: values of %d weights and %d biases for %d classes of %d inputs (want %d and %d)",
			len(v.Weight), len(v.Bias), classes, in, in*classes, classes)
	}
	for _, x := range append(slices.Clip(v.Weight), v.Bias...) {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("plan head: values hold %v", x)
		}
	}
	return nil
}

// initial returns the new head's starting weight [classes, in] and bias: the plan's
// values when it has them, else HeadInit with the plan's seed. Both are fresh copies.
func (h *HeadPlan) initial() (weight, bias []float32) {
	if h.Values != nil {
		return slices.Clone(h.Values.Weight), slices.Clone(h.Values.Bias)
	}
	return HeadInit(h.In, h.Classes, h.Seed)
}
