package main

import (
	"fmt"
	"slices"
	"sort"

	"github.com/sptctl/sptctl/sensitivity"
)

// flat is a score file's entries in one fixed order (initializers by name).
func flat(s sensitivity.Scores) []float32 {
	names := make([]string, 0, len(s))
	for n := range s {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []float32
	for _, n := range names {
		out = append(out, s[n]...)
	}
	return out
}

// topSet is the set of the indices of the k largest entries (ties broken by index).
func topSet(x []float32, k int) map[int]bool {
	idx := make([]int, len(x))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case x[a] > x[b]:
			return -1
		case x[a] < x[b]:
			return 1
		}
		return 0
	})
	set := make(map[int]bool, k)
	for _, i := range idx[:k] {
		set[i] = true
	}
	return set
}

// overlap is the share of the top fraction q of a's entries that are also in b's.
func overlap(a, b []float32, q float64) (float64, error) {
	if len(a) != len(b) {
		return 0, fmt.Errorf("score files of %d and %d entries", len(a), len(b))
	}
	k := max(int(float64(len(a))*q), 1)
	sa, sb := topSet(a, k), topSet(b, k)
	same := 0
	for i := range sa {
		if sb[i] {
			same++
		}
	}
	return float64(same) / float64(k), nil
}
