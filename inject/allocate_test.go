package inject

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/surgery"
)

func TestDescKeyOrdersScoresDescending(t *testing.T) {
	xs := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 0.5, -0.5, 1e-30, -1e-30, float32(math.Inf(1)), float32(math.Inf(-1)), 3e38, -3e38, 1.0000001}
	for _, a := range xs {
		for _, b := range xs {
			ka, kb := descKey(a), descKey(b)
			if (a > b) != (ka < kb) || (a == b) != (ka == kb) {
				t.Errorf("descKey(%g)=%x descKey(%g)=%x out of order", a, ka, b, kb)
			}
		}
	}
}

// refOrder is the ranking by a full sort: descending score, then ascending id.
func refOrder(us []rankUnit) []uint32 {
	type e struct {
		s  float32
		id uint32
	}
	var es []e
	for _, u := range us {
		for k := int64(0); k < u.sp.size(); k++ {
			f := u.scores[u.sp.flat(k)]
			if f == 0 {
				f = 0 // -0 is +0
			}
			es = append(es, e{f, u.base + uint32(k)})
		}
	}
	slices.SortFunc(es, func(a, b e) int {
		switch {
		case a.s > b.s:
			return -1
		case a.s < b.s:
			return 1
		}
		return int(a.id) - int(b.id)
	})
	out := make([]uint32, len(es))
	for i, x := range es {
		out[i] = x.id
	}
	return out
}

func TestRankerMatchesFullSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 60; trial++ {
		var us []rankUnit
		base := uint32(0)
		for u := 0; u < 1+rng.IntN(6); u++ {
			rows, cols := 1+rng.IntN(9), 1+rng.IntN(9)
			sc := make([]float32, rows*cols)
			for i := range sc {
				switch trial % 4 {
				case 0: // continuous
					sc[i] = rng.Float32()*2 - 1
				case 1: // heavy ties
					sc[i] = float32(rng.IntN(3))
				case 2: // all equal (one exact key, streamed in id order)
					sc[i] = 0.25
				default: // mostly zero, some negative zero, close values in one bucket
					if rng.IntN(3) == 0 {
						sc[i] = 1 + float32(rng.IntN(50))*1e-7
					} else if rng.IntN(2) == 0 {
						sc[i] = float32(math.Copysign(0, -1))
					}
				}
			}
			var sp span
			if rng.IntN(2) == 0 && cols > 1 { // a column block
				c0 := rng.IntN(cols - 1)
				w := 1 + rng.IntN(cols-c0-1)
				sp = span{start: int64(c0), rows: int64(rows), rowLen: int64(w), stride: int64(cols)}
			} else {
				sp = span{0, 1, int64(rows * cols), int64(rows * cols)}
			}
			us = append(us, rankUnit{scores: sc, sp: sp, base: base})
			base += uint32(sp.size())
		}
		want := refOrder(us)
		target, maxChunk := int64(1+rng.IntN(4)), int64(2+rng.IntN(6))
		r, err := newRanker(us, target, maxChunk)
		if err != nil {
			t.Fatal(err)
		}
		var got []uint32
		for i := int64(0); ; i++ {
			id, u, ok := r.at(i)
			if !ok {
				break
			}
			if u != unitOf(r.bases, id) {
				t.Fatalf("id %d: unit %d, want %d", id, u, unitOf(r.bases, id))
			}
			got = append(got, id)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d (target %d, max chunk %d): ranker order\n%v\nwant\n%v", trial, target, maxChunk, got, want)
		}
	}
}

func TestRankerRejectsNaN(t *testing.T) {
	_, err := newRanker([]rankUnit{{scores: []float32{1, float32(math.NaN())}, sp: span{0, 1, 2, 2}}}, 4, 4)
	if err == nil {
		t.Fatal("NaN accepted")
	}
}

// bruteTotal is the allocation total at tau, computed from scratch.
func bruteTotal(us []scanUnit, bases []uint32, order []uint32, fixed int64, tau int) int64 {
	c := make([]int64, len(us))
	for _, id := range order[:tau] {
		c[unitOf(bases, id)]++
	}
	total := fixed
	for i, u := range us {
		if c[i] >= u.thresh {
			total += u.cost
		} else {
			total += c[i]
		}
	}
	return total
}

func TestScanTauIsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := 0; trial < 400; trial++ {
		n := 1 + rng.IntN(8)
		us := make([]scanUnit, n)
		bases := make([]uint32, n)
		var order []uint32
		total := uint32(0)
		for i := range us {
			size := 1 + rng.IntN(12)
			alpha := 0.3 + rng.Float64()*4 // below 1 too: non-monotone totals
			if trial%2 == 0 {
				alpha = 1 + rng.Float64()*10
			}
			cost := int64(1 + rng.IntN(15))
			us[i] = scanUnit{cost: cost, thresh: threshold(cost, alpha), size: int64(size), matrix: rng.IntN(2) == 0}
			bases[i] = total
			for k := 0; k < size; k++ {
				order = append(order, total+uint32(k))
			}
			total += uint32(size)
		}
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		fixed := int64(rng.IntN(5))
		budget := fixed + int64(rng.IntN(80))
		at := func(i int64) (uint32, int, bool) {
			if i < int64(len(order)) {
				return order[i], unitOf(bases, order[i]), true
			}
			return 0, 0, false
		}
		closest, below, _ := scanTau(us, bases, at, fixed, budget)
		// Brute force over every τ.
		var wc, wb point
		for tau := 0; tau <= len(order); tau++ {
			tot := bruteTotal(us, bases, order, fixed, tau)
			d, bd := abs64(tot-budget), abs64(wc.total-budget)
			if !wc.ok || d < bd || (d == bd && tot <= budget && wc.total > budget) {
				wc = point{int64(tau), tot, true}
			}
			if tot <= budget && (!wb.ok || tot > wb.total) {
				wb = point{int64(tau), tot, true}
			}
		}
		if closest != wc || below != wb {
			t.Fatalf("trial %d: scan closest %+v below %+v, brute force %+v %+v (units %+v budget %d fixed %d)", trial, closest, below, wc, wb, us, budget, fixed)
		}
		// The selection: its total is what its modes and entries add up to.
		sel := selectSPT(us, bases, at, fixed, budget)
		sum := fixed
		for i, u := range us {
			if sel.structured[i] {
				sum += u.cost
				if sel.counts[i] < u.thresh {
					t.Fatalf("trial %d: unit %d structured with %d < %d sensitive", trial, i, sel.counts[i], u.thresh)
				}
				if !u.matrix && len(sel.entries[i]) > 0 {
					t.Fatalf("trial %d: whole vector %d has sparse entries too", trial, i)
				}
			}
			sum += int64(len(sel.entries[i]))
		}
		if sum != sel.total {
			t.Fatalf("trial %d: selection total %d, its parts add up to %d", trial, sel.total, sum)
		}
		if sel.total < budget && sel.total != closest.total {
			// A fill that stops short must have run out of entries to take.
			for i, u := range us {
				if (u.matrix || !sel.structured[i]) && int64(len(sel.entries[i])) != u.size {
					t.Fatalf("trial %d: total %d under budget %d with entries of unit %d left", trial, sel.total, budget, i)
				}
			}
		}
		if d := sel.total - budget; d > 0 && float64(d) > 0.01*float64(budget) {
			t.Fatalf("trial %d: total %d over budget %d by more than 1%%", trial, sel.total, budget)
		}
	}
}

func TestThreshold(t *testing.T) {
	for _, c := range []struct {
		size int64
		div  float64
		want int64
	}{{512, 10, 52}, {510, 10, 51}, {32, 5, 7}, {30, 5, 6}, {12288, 10, 1229}, {1, 10, 1}, {7, 0.5, 14}} {
		if got := threshold(c.size, c.div); got != c.want {
			t.Errorf("threshold(%d, %g) = %d, want %d", c.size, c.div, got, c.want)
		}
	}
}

func TestStructuredCost(t *testing.T) {
	if got := structuredCost(LoRA, 8, 768, 3072); got != 8*(768+3072) {
		t.Errorf("LoRA fc1 cost %d", got)
	}
	if got := structuredCost(Adapter, 8, 768, 768); got != 8*(768+768)+8+768 {
		t.Errorf("Adapter q cost %d", got)
	}
	if got := structuredCost(Adapter, 8, 768, 3072); got != 2*8*3072+8+3072 {
		t.Errorf("Adapter fc1 cost %d", got)
	}
}

// setScores puts score x on the given flat indices of an initializer.
func setScores(s Scores, init string, x float32, flat ...int64) {
	for _, f := range flat {
		s[init][f] = x
	}
}

// unitByName finds a unit of the fixture.
func unitByName(t *testing.T, f fixture.Model, name string) unit {
	t.Helper()
	us, err := units(f.V, f.G)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range us {
		if u.name == name {
			return u
		}
	}
	t.Fatalf("no unit %s", name)
	return unit{}
}

func layerOf(p *Plan, name string) *LayerPlan {
	for i := range p.Layers {
		if p.Layers[i].Name == name {
			return &p.Layers[i]
		}
	}
	return nil
}

func vectorOf(p *Plan, name string) *VectorPlan {
	for i := range p.Vectors {
		if p.Vectors[i].Name == name {
			return &p.Vectors[i]
		}
	}
	return nil
}

// The structured threshold and the vector rule, on hand-made scores: q of block 0 has
// exactly cost/α = 52 sensitive entries (LoRA), fc1 of block 1 51 (sparse), the norm1
// scale of block 1 7 = ⌈32/5⌉ (whole), its shift 6 (sparse); everything else scores 0.
func TestRulesStructuredAndVector(t *testing.T) {
	f := fixture.Load(t, "../testdata/tv_op14_static.onnx")
	s := zeroScores(f.G)
	q := unitByName(t, f, "blocks.0.q")
	fc1 := unitByName(t, f, "blocks.1.fc1")
	sc := unitByName(t, f, "blocks.1.norm1.scale")
	sh := unitByName(t, f, "blocks.1.norm1.shift")
	for k := int64(0); k < 52; k++ {
		setScores(s, q.init, 10, q.sp.flat(k*7))
	}
	var fc1Idx []int64
	for k := int64(0); k < 51; k++ {
		fc1Idx = append(fc1Idx, fc1.sp.flat(k*3+1))
		setScores(s, fc1.init, 9, fc1.sp.flat(k*3+1))
	}
	for k := int64(0); k < 7; k++ {
		setScores(s, sc.init, 8, sc.sp.flat(k))
	}
	for k := int64(0); k < 6; k++ {
		setScores(s, sh.init, 7, sh.sp.flat(k+10))
	}
	opt := DefaultOptions()
	head := int64(f.V.Head.In+1) * 10
	want := head + 32 + 512 + 51 + 32 + 6
	opt.Budget = want
	p, err := Allocate(f.V, f.G, s, opt)
	if err != nil {
		t.Fatal(err)
	}
	if p.Totals.Total != want || p.Fill != 0 || p.Tau != 52+51+7+6 {
		t.Fatalf("total %d fill %d tau %d, want %d 0 %d (%s)", p.Totals.Total, p.Fill, p.Tau, want, 52+51+7+6, p.Note)
	}
	if l := layerOf(p, "blocks.0.q"); l == nil || l.Mode != ModeLoRA || l.Params != 512 || l.Sensitive != 52 {
		t.Errorf("blocks.0.q: %+v, want LoRA", l)
	}
	if l := layerOf(p, "blocks.1.fc1"); l == nil || l.Mode != ModeSparse || !slices.Equal(l.Indices, fc1Idx) {
		t.Errorf("blocks.1.fc1: %+v, want sparse %v", l, fc1Idx)
	}
	if v := vectorOf(p, "blocks.1.norm1.scale"); v == nil || v.Mode != ModeFull || v.Params != 32 {
		t.Errorf("norm1.scale: %+v, want whole", v)
	}
	if v := vectorOf(p, "blocks.1.norm1.shift"); v == nil || v.Mode != ModeSparse || !slices.Equal(v.Indices, []int64{10, 11, 12, 13, 14, 15}) {
		t.Errorf("norm1.shift: %+v, want sparse 10..15", v)
	}
	if len(p.Layers) != 2 || len(p.Vectors) != 2 {
		t.Errorf("plan has %d layers and %d vectors, want 2 and 2", len(p.Layers), len(p.Vectors))
	}
	sum := p.Summary()
	if !slices.Equal(sum.Structured, []string{"blocks.0.q"}) || !slices.Equal(sum.Vectors, []string{"blocks.1.norm1.scale"}) || sum.SparseEntries != 57 || sum.Trainable != want || sum.Budget != want {
		t.Errorf("summary %+v", sum)
	}
	// One entry fewer in q and a budget 100 lower: q would turn structured only with its
	// 52nd entry (a zero score), which overshoots by more than 1%, so the structured set
	// of τ = 115 is kept and the fill tops it up with the next entries (q's zeros).
	s[q.init][q.sp.flat(0)] = 0
	opt.Budget = want - 100
	p, err = Allocate(f.V, f.G, s, opt)
	if err != nil {
		t.Fatal(err)
	}
	if l := layerOf(p, "blocks.0.q"); l == nil || l.Mode != ModeSparse || l.Sensitive != 51 {
		t.Errorf("blocks.0.q with 51 sensitive entries: %+v, want sparse", l)
	}
	if p.Totals.Total != opt.Budget || p.Tau != 115 || p.TauClosest != 116 || p.Fill != 512-51-100 {
		t.Errorf("total %d τ %d closest %d fill %d, want %d 115 116 %d (%s)", p.Totals.Total, p.Tau, p.TauClosest, p.Fill, opt.Budget, 512-51-100, p.Note)
	}
}

// A fused q/k/v weight is three matrices: sensitive entries in k's part only make k
// structured, and sparse entries of a part stay in the part's columns ([in, 3d]) or
// rows ([3d, in]).
func TestFusedIsThreeMatrices(t *testing.T) {
	for _, fx := range []string{"timm_op17", "tv_op13_nofold"} {
		t.Run(fx, func(t *testing.T) {
			f := fixture.Load(t, "../testdata/"+fx+".onnx")
			s := zeroScores(f.G)
			k := unitByName(t, f, "blocks.0.k")
			v := unitByName(t, f, "blocks.0.v")
			if !k.lin.Fused || k.init != v.init {
				t.Fatal("fixture not fused")
			}
			cost := structuredCost(LoRA, 8, k.in, k.out)
			for i := int64(0); i < threshold(cost, 10); i++ {
				setScores(s, k.init, 5, k.sp.flat(i*3))
			}
			for i := int64(0); i < 20; i++ {
				setScores(s, v.init, 4, v.sp.flat(i*5+2))
			}
			opt := DefaultOptions()
			opt.Budget = int64(f.V.Head.In+1)*10 + int64(f.V.Dim) + cost + 20
			p, err := Allocate(f.V, f.G, s, opt)
			if err != nil {
				t.Fatal(err)
			}
			if l := layerOf(p, "blocks.0.k"); l == nil || l.Mode != ModeLoRA || l.Params != cost || !l.Fused || l.Offset != k.lin.Offset {
				t.Errorf("k: %+v", l)
			}
			lv := layerOf(p, "blocks.0.v")
			if lv == nil || lv.Mode != ModeSparse || len(lv.Indices) != 20 {
				t.Fatalf("v: %+v", lv)
			}
			dims := v.dims
			for _, fl := range lv.Indices {
				row, col := fl/dims[1], fl%dims[1]
				if k.lin.Layout == surgery.InOut && (col < int64(v.lin.Offset) || col >= int64(v.lin.Offset+v.lin.Out)) {
					t.Errorf("v entry %d at column %d, outside v's columns", fl, col)
				}
				if k.lin.Layout == surgery.OutIn && (row < int64(v.lin.Offset) || row >= int64(v.lin.Offset+v.lin.Out)) {
					t.Errorf("v entry %d at row %d, outside v's rows", fl, row)
				}
			}
			if layerOf(p, "blocks.0.q") != nil {
				t.Error("q tuned")
			}
		})
	}
}

// Equal scores everywhere: ties go by unit order, then flat index, whatever the run.
func TestTiesAreDeterministic(t *testing.T) {
	f := fixture.Load(t, "../testdata/hf_op17.onnx")
	s := zeroScores(f.G)
	opt := DefaultOptions()
	head := int64(f.V.Head.In+1) * 10
	opt.Budget = head + 48 + 40
	var first *Plan
	for run := 0; run < 3; run++ {
		p, err := Allocate(f.V, f.G, s, opt)
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = p
			continue
		}
		a, _ := json.Marshal(first)
		b, _ := json.Marshal(p)
		if string(a) != string(b) {
			t.Fatal("two runs gave different plans")
		}
	}
	// 40 sensitive entries, all in the first unit (blocks.0.q), its first 40.
	l := layerOf(first, "blocks.0.q")
	if l == nil || l.Mode != ModeSparse || len(l.Indices) != 40 || l.Indices[0] != 0 || l.Indices[39] != 39 || len(first.Layers) != 1 {
		t.Fatalf("plan layers %+v", first.Layers)
	}
}

func TestBudgetWithinOnePercentSynthetic(t *testing.T) {
	dim, mlp := 192, 768
	if testing.Short() {
		dim, mlp = 96, 384
	}
	for _, fused := range []bool{true, false} {
		us, s := synth(12, dim, mlp, fused, 5)
		var backbone int64
		for _, u := range us {
			backbone += u.sp.size()
		}
		for _, typ := range []Type{LoRA, Adapter} {
			for _, pct := range []float64{0.1, 0.2, 0.5, 1, 2} {
				opt := DefaultOptions()
				opt.Type = typ
				opt.Budget = int64(float64(backbone) * pct / 100)
				p := synthPlan(dim, 10, opt.Budget, opt)
				if err := allocateSPT(p, us, s, opt); err != nil {
					t.Fatalf("fused=%v %s %.1f%%: %v", fused, typ, pct, err)
				}
				d := math.Abs(float64(p.Totals.Total-opt.Budget)) / float64(opt.Budget)
				if d > 0.01 {
					t.Errorf("fused=%v %s %.1f%%: total %d, budget %d (%.2f%% off; %s)", fused, typ, pct, p.Totals.Total, opt.Budget, 100*d, p.Note)
				}
				if err := p.validate(); err != nil {
					t.Errorf("fused=%v %s %.1f%%: %v", fused, typ, pct, err)
				}
				nStruct := len(p.Summary().Structured)
				t.Logf("fused=%v %s %.1f%% budget %d: total %d, τ %d (closest %d), fill %d, %d structured, %d sparse entries, %d whole vectors",
					fused, typ, pct, opt.Budget, p.Totals.Total, p.Tau, p.TauClosest, p.Fill, nStruct, p.Totals.SparseEntries, len(p.Summary().Vectors))
			}
		}
	}
}

func TestBudgetWithinOnePercentFixtures(t *testing.T) {
	for _, path := range fixture.Paths(t) {
		f := fixture.Load(t, path)
		s := randomScores(f.G, 9)
		backbone := BackboneParams(f.V, f.G)
		for _, typ := range []Type{LoRA, Adapter} {
			for _, pct := range []float64{3, 5, 10, 20} {
				opt := DefaultOptions()
				opt.Type = typ
				opt.Budget = int64(float64(backbone) * pct / 100)
				p, err := Allocate(f.V, f.G, s, opt)
				if err != nil {
					t.Errorf("%s %s %g%%: %v", fixture.Name(path), typ, pct, err)
					continue
				}
				if d := math.Abs(float64(p.Totals.Total-opt.Budget)) / float64(opt.Budget); d > 0.01 {
					t.Errorf("%s %s %g%%: total %d, budget %d", fixture.Name(path), typ, pct, p.Totals.Total, opt.Budget)
				}
			}
		}
	}
}

func TestBackboneAndFullMatchPyTorch(t *testing.T) {
	for _, path := range fixture.Paths(t) {
		f := fixture.Load(t, path)
		var truth struct {
			Params int64 `json:"params"`
		}
		b, err := os.ReadFile(strings.TrimSuffix(path, ".onnx") + ".json")
		if err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(b, &truth)
		opt := DefaultOptions()
		opt.Strategy = Full
		p, err := Allocate(f.V, f.G, nil, opt)
		if err != nil {
			t.Fatal(err)
		}
		if p.Totals.Total != truth.Params {
			t.Errorf("%s: full fine-tuning trains %d parameters, PyTorch counts %d", fixture.Name(path), p.Totals.Total, truth.Params)
		}
		if bb := BackboneParams(f.V, f.G); bb != truth.Params-p.Head.Params {
			t.Errorf("%s: backbone %d, want %d", fixture.Name(path), bb, truth.Params-p.Head.Params)
		}
	}
}

func TestBaselines(t *testing.T) {
	f := fixture.Load(t, "../testdata/timm_op14.onnx")
	d, mlp, blocks := int64(32), int64(64), int64(2)
	head := (d + 1) * 10
	for _, c := range []struct {
		strategy Strategy
		typ      Type
		want     int64
		layers   int
		vectors  int
	}{
		{LoRAQV, Adapter, head + d + blocks*2*8*(d+d), 4, 0},
		{QV, Adapter, head + d + blocks*2*(2*8*d+8+d), 4, 0},
		{Uniform, LoRA, head + d + blocks*8*(4*(d+d)+2*(d+mlp)), 12, 0},
		{Uniform, Adapter, head + d + blocks*(4*(16*d+8+d)+(16*mlp+8+mlp)+(16*d+8+d)), 12, 0},
		{BitFit, LoRA, head + d + blocks*(7*d+mlp), 0, 16},
		{Linear, LoRA, head, 0, 0},
	} {
		opt := DefaultOptions()
		opt.Strategy, opt.Type = c.strategy, c.typ
		p, err := Allocate(f.V, f.G, nil, opt)
		if err != nil {
			t.Fatalf("%s: %v", c.strategy, err)
		}
		if p.Totals.Total != c.want || len(p.Layers) != c.layers || len(p.Vectors) != c.vectors {
			t.Errorf("%s/%s: total %d, %d layers, %d vectors; want %d, %d, %d", c.strategy, c.typ, p.Totals.Total, len(p.Layers), len(p.Vectors), c.want, c.layers, c.vectors)
		}
	}
}

func TestAllocateBadInput(t *testing.T) {
	f := fixture.Load(t, "../testdata/tv_op17_dynamic.onnx")
	s := randomScores(f.G, 1)
	missing := Scores{}
	for k, v := range s {
		missing[k] = v
	}
	fc2 := unitByName(t, f, "blocks.1.fc2")
	delete(missing, fc2.init)
	short := Scores{}
	for k, v := range s {
		short[k] = v
	}
	short[fc2.init] = short[fc2.init][:10]
	nan := Scores{}
	for k, v := range s {
		nan[k] = slices.Clone(v)
	}
	nan[fc2.init][3] = float32(math.NaN())
	ok := DefaultOptions()
	ok.Budget = 20000
	for _, c := range []struct {
		name string
		mod  func(*Options)
		s    Scores
		want string
	}{
		{"zero budget", func(o *Options) { o.Budget = 0 }, s, "budget must be positive"},
		{"negative budget", func(o *Options) { o.Budget = -5 }, s, "budget must be positive"},
		{"budget over model", func(o *Options) { o.Budget = 1 << 40 }, s, "larger than the whole model"},
		{"budget under head", func(o *Options) { o.Budget = 100 }, s, "smaller than the head"},
		{"rank 0", func(o *Options) { o.Rank = 0 }, s, "rank must be positive"},
		{"rank -1", func(o *Options) { o.Rank = -1 }, s, "rank must be positive"},
		{"alpha", func(o *Options) { o.Alpha = 0 }, s, "alpha"},
		{"beta", func(o *Options) { o.Beta = math.NaN() }, s, "beta"},
		{"strategy", func(o *Options) { o.Strategy = "magic" }, s, `unknown strategy "magic"`},
		{"type", func(o *Options) { o.Type = "prefix" }, s, `unknown structured type "prefix"`},
		{"missing scores", nil, missing, "no scores for blocks.1.fc2"},
		{"short scores", nil, short, "blocks.1.fc2"},
		{"nil scores", nil, nil, "no scores for blocks.0.q"},
		{"NaN", nil, nan, "NaN"},
	} {
		opt := ok
		if c.mod != nil {
			c.mod(&opt)
		}
		_, err := Allocate(f.V, f.G, c.s, opt)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

func TestParseBudget(t *testing.T) {
	for _, c := range []struct {
		s    string
		want int64
	}{{"0.4M", 400000}, {"400000", 400000}, {"400k", 400000}, {"1.5K", 1500}, {" 2m ", 2000000}, {"0.5%", 500000}, {"100%", 100000000}, {"1e5", 100000}} {
		got, err := ParseBudget(c.s, 100000000)
		if err != nil || got != c.want {
			t.Errorf("ParseBudget(%q) = %d, %v; want %d", c.s, got, err, c.want)
		}
	}
	for _, s := range []string{"", "abc", "-1", "0", "0%", "101%", "M", "NaN", "1.2.3k", "0.0000001"} {
		if _, err := ParseBudget(s, 1000); err == nil {
			t.Errorf("ParseBudget(%q) accepted", s)
		}
	}
	if _, err := ParseBudget("1%", 0); err == nil {
		t.Error("percentage without a backbone accepted")
	}
}
