package inject

import (
	"fmt"
	"math"
)

// The ranking of all candidate entries (every entry of every block matrix and vector:
// about 85 M for ViT-B/16) by descending score, ties by ascending global id (the unit's
// position in units order, then the flat index), is produced lazily, best first, in
// chunks, so that only the prefix the allocation actually reads is ever sorted.
//
// Every entry gets a 32-bit key that orders scores descending (descKey). One pass
// counts the keys' top 16 bits (65,536 buckets). A chunk is a run of consecutive
// buckets holding about `target` entries; one pass collects them as key<<32 | id and
// sorts them (so the order inside a chunk is exact, ties included). A bucket too large
// for a chunk is split by the low 16 bits (one more counting pass); a run of entries
// with one exact key too large for a chunk needs no sort at all (equal keys are ordered
// by id, which is enumeration order) and is streamed in id order. Memory is bounded by
// the largest chunk (maxChunk entries) plus 4 bytes per ranked entry handed out.

const buckets = 1 << 16

// rankUnit is one unit's entries as the ranker sees them.
type rankUnit struct {
	scores []float32 // the whole stored initializer's scores
	sp     span
	base   uint32 // global id of the unit's first entry
}

type ranker struct {
	units []rankUnit
	n     int64
	hist  []int64  // per top-16-bit bucket of descKey
	ids   []uint32 // the ranking so far: global ids
	uidx  []uint16 // and the index of each one's unit
	bases []uint32 // the units' first global ids

	next             int   // next bucket
	target, maxChunk int64 // chunk sizes (entries)

	sub     int     // bucket being split by its low 16 bits, or -1
	hist2   []int64 // its low-16-bit counts
	nextSub int

	exact    bool   // streaming one exact key in id order
	exactKey uint32 // that key
	curU     int    // cursor: unit
	curK     int64  // cursor: entry within the unit
	done     bool
}

// descKey maps a score to a key whose unsigned order is the scores' descending order
// (-0 is +0; NaN is rejected before).
func descKey(f float32) uint32 {
	b := math.Float32bits(f)
	if b == 0x80000000 {
		b = 0
	}
	if b&0x80000000 != 0 {
		b = ^b
	} else {
		b |= 0x80000000
	}
	return ^b
}

// newRanker counts the keys of all entries. It fails on NaN scores.
func newRanker(us []rankUnit, target, maxChunk int64) (*ranker, error) {
	if len(us) > math.MaxUint16 {
		return nil, fmt.Errorf("too many units (%d)", len(us))
	}
	r := &ranker{units: us, hist: make([]int64, buckets), sub: -1, target: target, maxChunk: maxChunk}
	for _, u := range us {
		r.bases = append(r.bases, u.base)
	}
	if r.target < 1 {
		r.target = 1
	}
	if r.maxChunk < r.target {
		r.maxChunk = r.target
	}
	var n int64
	for i := range us {
		u := &us[i]
		if int64(u.base) != n {
			return nil, fmt.Errorf("internal error: unit %d base %d, want %d", i, u.base, n)
		}
		for row := int64(0); row < u.sp.rows; row++ {
			off := u.sp.start + row*u.sp.stride
			for _, f := range u.scores[off : off+u.sp.rowLen] {
				if f != f {
					return nil, fmt.Errorf("NaN score")
				}
				r.hist[descKey(f)>>16]++
			}
		}
		n += u.sp.size()
	}
	r.n = n
	return r, nil
}

// at returns the i-th ranked id and its unit's index, or false past the end.
func (r *ranker) at(i int64) (uint32, int, bool) {
	for int64(len(r.ids)) <= i && !r.done {
		r.refill()
	}
	if i < int64(len(r.ids)) {
		return r.ids[i], int(r.uidx[i]), true
	}
	return 0, 0, false
}

func (r *ranker) grow() {
	if r.target < r.maxChunk {
		r.target = min(2*r.target, r.maxChunk)
	}
}

// refill appends the next chunk (possibly empty, but always advancing).
func (r *ranker) refill() {
	switch {
	case r.exact:
		r.refillExact()
		return
	case r.sub >= 0:
		r.refillSub()
		return
	}
	for r.next < buckets && r.hist[r.next] == 0 {
		r.next++
	}
	if r.next == buckets {
		r.done = true
		return
	}
	if r.hist[r.next] > r.maxChunk {
		b := r.next
		r.next++
		r.sub, r.nextSub = b, 0
		r.hist2 = make([]int64, buckets)
		r.each(func(key, _ uint32) {
			if int(key>>16) == b {
				r.hist2[key&0xffff]++
			}
		})
		return
	}
	lo, cnt := r.next, int64(0)
	for r.next < buckets && r.hist[r.next] <= r.maxChunk && (cnt == 0 || cnt+r.hist[r.next] <= r.target) {
		cnt += r.hist[r.next]
		r.next++
	}
	r.collect(uint32(lo)<<16, uint32(r.next)<<16-1, cnt)
	r.grow()
}

func (r *ranker) refillSub() {
	for r.nextSub < buckets && r.hist2[r.nextSub] == 0 {
		r.nextSub++
	}
	if r.nextSub == buckets {
		r.sub, r.hist2 = -1, nil
		return
	}
	hi := uint32(r.sub) << 16
	if r.hist2[r.nextSub] > r.maxChunk {
		r.exact, r.exactKey, r.curU, r.curK = true, hi|uint32(r.nextSub), 0, 0
		r.nextSub++
		return
	}
	lo, cnt := r.nextSub, int64(0)
	for r.nextSub < buckets && r.hist2[r.nextSub] <= r.maxChunk && (cnt == 0 || cnt+r.hist2[r.nextSub] <= r.target) {
		cnt += r.hist2[r.nextSub]
		r.nextSub++
	}
	r.collect(hi|uint32(lo), hi|uint32(r.nextSub-1), cnt)
	r.grow()
}

// refillExact appends up to maxChunk ids with key exactKey, in id order, from the cursor.
func (r *ranker) refillExact() {
	got := int64(0)
	for ; r.curU < len(r.units); r.curU, r.curK = r.curU+1, 0 {
		u := &r.units[r.curU]
		for k := r.curK; k < u.sp.size(); k++ {
			if descKey(u.scores[u.sp.flat(k)]) == r.exactKey {
				if got == r.maxChunk {
					r.curK = k
					return
				}
				r.ids = append(r.ids, u.base+uint32(k))
				r.uidx = append(r.uidx, uint16(r.curU))
				got++
			}
		}
	}
	r.exact = false
}

// collect appends, sorted, the ids of all entries whose key is in [lo, hi]. They are
// gathered in id order, so a stable sort by key alone ranks ties by id.
func (r *ranker) collect(lo, hi uint32, cnt int64) {
	keys := make([]uint32, 0, cnt)
	ids := make([]uint32, 0, cnt)
	units := make([]uint16, 0, cnt)
	for i := range r.units {
		u := &r.units[i]
		id := u.base
		for row := int64(0); row < u.sp.rows; row++ {
			off := u.sp.start + row*u.sp.stride
			for _, f := range u.scores[off : off+u.sp.rowLen] {
				if k := descKey(f); k >= lo && k <= hi {
					keys = append(keys, k)
					ids = append(ids, id)
					units = append(units, uint16(i))
				}
				id++
			}
		}
	}
	radixSort(keys, ids, units, lo>>16 != hi>>16)
	r.ids = append(r.ids, ids...)
	r.uidx = append(r.uidx, units...)
}

// radixSort sorts keys ascending, stably, permuting ids and units alike: two counting
// passes of 16 bits (the high one only if the keys differ there).
func radixSort(keys, ids []uint32, units []uint16, high bool) {
	n := len(keys)
	if n < 2 {
		return
	}
	tk, ti, tu := make([]uint32, n), make([]uint32, n), make([]uint16, n)
	var count [buckets + 1]int
	pass := func(shift uint, fk, fi []uint32, fu []uint16, dk, di []uint32, du []uint16) {
		count = [buckets + 1]int{}
		for _, k := range fk {
			count[(k>>shift)&0xffff+1]++
		}
		for i := 1; i <= buckets; i++ {
			count[i] += count[i-1]
		}
		for j, k := range fk {
			d := (k >> shift) & 0xffff
			at := count[d]
			count[d]++
			dk[at], di[at], du[at] = k, fi[j], fu[j]
		}
	}
	pass(0, keys, ids, units, tk, ti, tu)
	if high {
		pass(16, tk, ti, tu, keys, ids, units)
		return
	}
	copy(keys, tk)
	copy(ids, ti)
	copy(units, tu)
}

// each calls fn for every entry, in id order (used for the rare level-2 counts).
func (r *ranker) each(fn func(key, id uint32)) {
	for i := range r.units {
		u := &r.units[i]
		id := u.base
		for row := int64(0); row < u.sp.rows; row++ {
			off := u.sp.start + row*u.sp.stride
			for _, f := range u.scores[off : off+u.sp.rowLen] {
				fn(descKey(f), id)
				id++
			}
		}
	}
}

// unitOf returns the index of the unit holding global id, given the units' bases.
func unitOf(bases []uint32, id uint32) int {
	lo, hi := 0, len(bases) // bases[lo] <= id < bases[hi]
	for hi-lo > 1 {
		m := int(uint(lo+hi) >> 1)
		if bases[m] <= id {
			lo = m
		} else {
			hi = m
		}
	}
	return lo
}
