package inject

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// Scores are sensitivity scores keyed by initializer name: for each initializer, one
// score per entry, flattened in the initializer's stored layout (so a fused q/k/v
// weight has one array for all three parts).
type Scores map[string][]float32

// Type is the structured module type.
type Type string

// Structured module types.
const (
	LoRA    Type = "lora"
	Adapter Type = "adapter"
)

// Strategy is how the budget is spent.
type Strategy string

// Strategies: SPT itself and the baselines it is compared with.
const (
	SPT     Strategy = "spt"     // sensitivity-aware allocation (the default)
	LoRAQV  Strategy = "lora-qv" // LoRA on q and v of every block
	QV      Strategy = "qv"      // the structured type (--type) on q and v of every block
	Uniform Strategy = "uniform" // the structured type on all six matrices of every block
	BitFit  Strategy = "bitfit"  // all block biases (linear biases and LayerNorm shifts)
	Linear  Strategy = "linear"  // the head only
	Full    Strategy = "full"    // everything
)

// Strategies lists the strategy names, for help texts.
func Strategies() []Strategy { return []Strategy{SPT, LoRAQV, QV, Uniform, BitFit, Linear, Full} }

// Options control Allocate.
type Options struct {
	Budget   int64    // trainable parameters wanted, head and class token included (spt)
	Type     Type     // lora (default), or another module type (ModuleTypes)
	Rank     int      // rank of the structured modules (8 in the reference); must be > 0
	Alpha    float64  // a matrix is structured if its sensitive count ≥ cost/Alpha (10)
	Beta     float64  // a vector is tuned whole if its sensitive count ≥ dim/Beta (5)
	Strategy Strategy // spt (default), lora-qv, uniform, bitfit, linear, full
	Classes  int      // task classes, for the new head; 0: the model's head size
	HeadSeed int64    // seed of the new head (the one sensitivity ran with)
	// Scoring and ScoringHeads record the head the scores were taken through
	// (sensitivity.Info); HeadValues, when set, is that head, where the new head starts.
	Scoring      string
	ScoringHeads int
	HeadValues   *HeadValues
}

// DefaultOptions are the reference settings: LoRA, rank 8, α 10, β 5, spt.
func DefaultOptions() Options {
	return Options{Type: LoRA, Rank: 8, Alpha: 10, Beta: 5, Strategy: SPT}
}

// ParseBudget reads a budget: a count ("400000"), a count with a suffix k, M or G
// ("0.4M", "400k"), or a percentage of backbone parameters ("0.5%").
func ParseBudget(s string, backboneParams int64) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("budget: empty")
	}
	mult, pct := 1.0, false
	switch t[len(t)-1] {
	case '%':
		pct = true
	case 'k', 'K':
		mult = 1e3
	case 'm', 'M':
		mult = 1e6
	case 'g', 'G':
		mult = 1e9
	}
	if pct || mult != 1 {
		t = strings.TrimSpace(t[:len(t)-1])
	}
	x, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
		return 0, fmt.Errorf("budget %q: want a number of parameters (400000, 0.4M, 400k) or a percentage of the backbone (0.5%%)", s)
	}
	if pct {
		if backboneParams <= 0 {
			return 0, fmt.Errorf("budget %q: a percentage needs the backbone's parameter count", s)
		}
		if x > 100 {
			return 0, fmt.Errorf("budget %q: more than 100%% of the backbone", s)
		}
		mult = float64(backboneParams) / 100
	}
	n := math.Round(x * mult)
	if n <= 0 {
		return 0, fmt.Errorf("budget %q: must be positive", s)
	}
	if n > math.MaxInt64/2 {
		return 0, fmt.Errorf("budget %q: too large", s)
	}
	return int64(n), nil
}

// BackboneParams counts the parameters of the ViT without its head: the block
// matrices and vectors (each logical one, also when de-duplicated in the file), the
// patch embedding, class token, position embedding and final LayerNorm. Percent
// budgets are relative to it.
func BackboneParams(v *surgery.ViT, g *surgery.Graph) int64 {
	var n int64
	for _, l := range v.Linears() {
		n += int64(l.In) * int64(l.Out)
	}
	for _, vec := range v.Vectors() {
		n += int64(vec.Size)
	}
	for _, name := range []string{v.PatchEmbed, v.PatchBias, v.ClassToken, v.PosEmbed, v.FinalNorm.Scale, v.FinalNorm.Shift} {
		if t := g.Initializer(name); name != "" && t != nil {
			n += onnxio.NumElements(t.Dims)
		}
	}
	return n
}

func (o *Options) normalize() error {
	if o.Strategy == "" {
		o.Strategy = SPT
	}
	if o.Type == "" {
		o.Type = LoRA
	}
	if !slices.Contains(Strategies(), o.Strategy) {
		return fmt.Errorf("unknown strategy %q (want one of %s)", o.Strategy, strategyList())
	}
	if !slices.Contains(ModuleTypes(), o.Type) {
		return fmt.Errorf("unknown structured type %q (want one of %s)", o.Type, moduleTypeList())
	}
	if o.Rank <= 0 {
		return fmt.Errorf("rank must be positive, got %d", o.Rank)
	}
	if !(o.Alpha > 0) || math.IsInf(o.Alpha, 0) {
		return fmt.Errorf("alpha must be positive, got %g", o.Alpha)
	}
	if !(o.Beta > 0) || math.IsInf(o.Beta, 0) {
		return fmt.Errorf("beta must be positive, got %g", o.Beta)
	}
	if o.Classes < 0 {
		return fmt.Errorf("classes must be positive, got %d", o.Classes)
	}
	if o.Budget < 0 || (o.Strategy == SPT && o.Budget == 0) {
		return fmt.Errorf("budget must be positive, got %d", o.Budget)
	}
	return nil
}

func strategyList() string {
	var s []string
	for _, x := range Strategies() {
		s = append(s, string(x))
	}
	return strings.Join(s, ", ")
}

// Allocate decides which parameters of the ViT v (found in g) to train.
//
// With the spt strategy it ranks every entry of every block matrix (q, k, v, proj,
// fc1, fc2; a fused q/k/v projection is three matrices) and block vector by its score
// (descending; ties by unit order, then flat index), then finds the sensitive-set size
// τ whose allocation is closest to opt.Budget: a matrix with at least cost/α sensitive
// entries gets a structured module (LoRA, Adapter or DoRA), otherwise its sensitive entries
// are trained as a sparse delta; a vector with at least dim/β sensitive entries is
// trained whole, otherwise its sensitive entries sparsely; the head ((in+1)·classes)
// and class token count too. The structured set of that τ is then kept and what is left
// of the budget is filled with the next most sensitive entries of the unstructured
// matrices (docs/ARCHITECTURE.md, "Why the allocator fills"), so the plan's total is within 1% of the budget
// (in practice equal to it), or Allocate fails saying why.
//
// The baselines ignore the scores (s may be nil) and the budget.
func Allocate(v *surgery.ViT, g *surgery.Graph, s Scores, opt Options) (*Plan, error) {
	if err := opt.normalize(); err != nil {
		return nil, err
	}
	if v == nil || g == nil || v.Head == nil || len(v.Blocks) == 0 {
		return nil, errors.New("allocate: no ViT")
	}
	if err := opt.checkLimits(v, g); err != nil {
		return nil, err
	}
	fp, err := onnxio.Fingerprint(g.Proto())
	if err != nil {
		return nil, err
	}
	us, err := units(v, g)
	if err != nil {
		return nil, err
	}
	classes := opt.Classes
	if classes == 0 {
		classes = v.Head.Out
	}
	p := &Plan{
		Version: PlanVersion, BaseFingerprint: fp, Dim: v.Dim, Blocks: len(v.Blocks), Budget: opt.Budget,
		Options: PlanOptions{Strategy: string(opt.Strategy), Type: string(opt.Type), Rank: opt.Rank, Alpha: opt.Alpha,
			Beta: opt.Beta, Classes: classes, HeadSeed: opt.HeadSeed, Scoring: opt.Scoring, ScoringHeads: opt.ScoringHeads, LoRAScaling: 1},
		Head:    HeadPlan{In: v.Head.In, Classes: classes, Params: int64(v.Head.In+1) * int64(classes), Seed: opt.HeadSeed, Weight: v.Head.Weight, Bias: v.Head.Bias},
		Layers:  []LayerPlan{},
		Vectors: []VectorPlan{},
	}
	if hv := opt.HeadValues; hv != nil {
		if err := hv.check(v.Head.In, classes); err != nil {
			return nil, fmt.Errorf("allocate: %w", err)
		}
		p.Head.Init, p.Head.Values = opt.Scoring, &HeadValues{Weight: slices.Clone(hv.Weight), Bias: slices.Clone(hv.Bias)}
	}
	if v.ClassToken != "" && opt.Strategy != Linear {
		if t := g.Initializer(v.ClassToken); t != nil {
			p.ClassToken = &TensorPlan{Name: "class_token", Init: v.ClassToken, Params: onnxio.NumElements(t.Dims)}
		}
	}
	whole := fullTotal(us, g, v, p)
	if opt.Budget > whole {
		return nil, fmt.Errorf("budget %d is larger than the whole model (%d parameters with full fine-tuning and a %d-class head)", opt.Budget, whole, classes)
	}
	r := int64(opt.Rank)
	switch opt.Strategy {
	case SPT:
		if err := allocateSPT(p, us, s, opt); err != nil {
			return nil, err
		}
	case LoRAQV, QV, Uniform:
		for i := range us {
			u := &us[i]
			if !u.matrix || (opt.Strategy != Uniform && u.lin.Kind != surgery.Q && u.lin.Kind != surgery.V) {
				continue
			}
			typ := opt.Type
			if opt.Strategy == LoRAQV {
				typ = LoRA
			}
			p.Layers = append(p.Layers, layerPlan(u, string(typ), opt.Rank, structuredCost(typ, r, u.in, u.out)))
		}
	case BitFit:
		for i := range us {
			if us[i].isBias() {
				p.Vectors = append(p.Vectors, vectorPlan(&us[i], ModeFull, nil))
			}
		}
	case Linear:
	case Full:
		for i := range us {
			u := &us[i]
			if u.matrix {
				p.Layers = append(p.Layers, layerPlan(u, ModeFull, 0, u.in*u.out))
			} else {
				p.Vectors = append(p.Vectors, vectorPlan(u, ModeFull, nil))
			}
		}
		p.Extra = extras(v, g)
	}
	p.recount()
	if opt.Strategy == SPT {
		if d := p.Totals.Total - opt.Budget; math.Abs(float64(d)) > 0.01*float64(opt.Budget) {
			return nil, fmt.Errorf("budget %d cannot be met within 1%%: the closest allocation has %d trainable parameters (%s)", opt.Budget, p.Totals.Total, p.Note)
		}
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("internal error: %w", err)
	}
	return p, nil
}

// extras are the non-block parameters that full fine-tuning trains besides the head
// and class token: patch embedding, position embedding, final LayerNorm.
// Each is one logical tensor, even where the file de-duplicates it with another.
func extras(v *surgery.ViT, g *surgery.Graph) []TensorPlan {
	var out []TensorPlan
	for _, e := range []TensorPlan{{Name: "patch_embed.weight", Init: v.PatchEmbed}, {Name: "patch_embed.bias", Init: v.PatchBias},
		{Name: "pos_embed", Init: v.PosEmbed}, {Name: "norm.scale", Init: v.FinalNorm.Scale}, {Name: "norm.shift", Init: v.FinalNorm.Shift}} {
		if t := g.Initializer(e.Init); e.Init != "" && t != nil {
			e.Params = onnxio.NumElements(t.Dims)
			out = append(out, e)
		}
	}
	return out
}

// fullTotal is the trainable count of full fine-tuning with p's head.
func fullTotal(us []unit, g *surgery.Graph, v *surgery.ViT, p *Plan) int64 {
	n := p.Head.Params
	if p.ClassToken != nil {
		n += p.ClassToken.Params
	} else if t := g.Initializer(v.ClassToken); v.ClassToken != "" && t != nil {
		n += onnxio.NumElements(t.Dims)
	}
	for _, u := range us {
		n += u.sp.size()
	}
	for _, e := range extras(v, g) {
		n += e.Params
	}
	return n
}

func layerPlan(u *unit, mode string, rank int, params int64) LayerPlan {
	l := u.lin
	return LayerPlan{Name: u.name, Block: u.block, Kind: string(l.Kind), Weight: u.init, Layout: l.Layout.String(),
		In: l.In, Out: l.Out, Fused: l.Fused, Offset: l.Offset, Mode: mode, Rank: rank, Params: params}
}

func vectorPlan(u *unit, mode string, idx []int64) VectorPlan {
	params := int64(u.vec.Size)
	if mode == ModeSparse {
		params = int64(len(idx))
	}
	return VectorPlan{Name: u.name, Block: u.block, Init: u.init, Offset: u.vec.Offset, Size: u.vec.Size, Mode: mode, Params: params, Indices: idx}
}

// threshold is the smallest count c with c·div ≥ size (c ≥ size/div), at least 1.
func threshold(size int64, div float64) int64 {
	t := int64(math.Ceil(float64(size) / div))
	for t > 1 && float64(t-1)*div >= float64(size) {
		t--
	}
	for float64(t)*div < float64(size) {
		t++
	}
	return max(t, 1)
}

// Chunk sizes of the ranker (variables so tests can make them tiny).
var (
	rankMinChunk int64 = 1 << 12
	rankMaxChunk int64 = 1 << 23
)

func allocateSPT(p *Plan, us []unit, s Scores, opt Options) error {
	// Scores: one array per initializer, of the initializer's size.
	ru := make([]rankUnit, len(us))
	su := make([]scanUnit, len(us))
	bases := make([]uint32, len(us))
	var n int64
	for i := range us {
		u := &us[i]
		sc, ok := s[u.init]
		if !ok {
			return fmt.Errorf("scores: no scores for %s (initializer %q)", u.name, u.init)
		}
		if want := onnxio.NumElements(u.dims); int64(len(sc)) != want {
			return fmt.Errorf("scores: %s (initializer %q) has %d scores, want %d (shape %v)", u.name, u.init, len(sc), want, u.dims)
		}
		if n+u.sp.size() > math.MaxUint32 {
			return errors.New("scores: more than 2³² candidate entries")
		}
		ru[i] = rankUnit{scores: sc, sp: u.sp, base: uint32(n)}
		bases[i] = uint32(n)
		n += u.sp.size()
		if u.matrix {
			cost := structuredCost(opt.Type, int64(opt.Rank), u.in, u.out)
			su[i] = scanUnit{cost: cost, thresh: threshold(cost, opt.Alpha), size: u.sp.size(), matrix: true}
		} else {
			su[i] = scanUnit{cost: u.out, thresh: threshold(u.out, opt.Beta), size: u.sp.size()}
		}
	}
	fixed := p.Head.Params
	if p.ClassToken != nil {
		fixed += p.ClassToken.Params
	}
	if fixed > opt.Budget {
		return fmt.Errorf("budget %d is smaller than the head (%d) and class token (%d), which are always trained", opt.Budget, p.Head.Params, fixed-p.Head.Params)
	}
	rk, err := newRanker(ru, min(max(2*opt.Budget, rankMinChunk), rankMaxChunk), rankMaxChunk)
	if err != nil {
		for i := range us { // name the culprit
			for _, f := range ru[i].scores {
				if f != f {
					return fmt.Errorf("scores: %s (initializer %q) has NaN scores", us[i].name, us[i].init)
				}
			}
		}
		return fmt.Errorf("scores: %w", err)
	}
	sel := selectSPT(su, bases, rk.at, fixed, opt.Budget)
	p.Candidates, p.Tau, p.TauClosest, p.Fill, p.Note = n, sel.tau, sel.tauClosest, sel.fill, sel.note
	for i := range us {
		u := &us[i]
		c := sel.counts[i]
		var idx []int64
		if !sel.structured[i] && len(sel.entries[i]) > 0 {
			idx = make([]int64, len(sel.entries[i]))
			for j, k := range sel.entries[i] {
				idx[j] = u.sp.flat(int64(k))
			}
			slices.Sort(idx)
		}
		if sel.structured[i] && len(sel.entries[i]) > 0 { // extra sparse entries (fill, last resort)
			idx = make([]int64, len(sel.entries[i]))
			for j, k := range sel.entries[i] {
				idx[j] = u.sp.flat(int64(k))
			}
			slices.Sort(idx)
		}
		switch {
		case u.matrix && sel.structured[i]:
			l := layerPlan(u, string(opt.Type), opt.Rank, su[i].cost+int64(len(idx)))
			l.Sensitive, l.Indices = c, idx
			p.Layers = append(p.Layers, l)
		case u.matrix && len(idx) > 0:
			l := layerPlan(u, ModeSparse, 0, int64(len(idx)))
			l.Sensitive, l.Indices = c, idx
			p.Layers = append(p.Layers, l)
		case sel.structured[i]:
			vp := vectorPlan(u, ModeFull, nil)
			vp.Sensitive = c
			p.Vectors = append(p.Vectors, vp)
		case len(idx) > 0:
			vp := vectorPlan(u, ModeSparse, idx)
			vp.Sensitive = c
			p.Vectors = append(p.Vectors, vp)
		}
	}
	p.recount()
	if p.Totals.Total != sel.total {
		return fmt.Errorf("internal error: plan total %d, search total %d", p.Totals.Total, sel.total)
	}
	return nil
}

// scanUnit is a candidate unit as the τ search sees it: with c of its size entries
// sensitive it costs c if c < thresh, else cost (a structured module, or a whole
// vector).
type scanUnit struct {
	cost, thresh, size int64
	matrix             bool
}

// orderFunc returns the i-th ranked candidate's global id and its unit's index, or
// false past the end.
type orderFunc func(i int64) (id uint32, unit int, ok bool)

// point is a sensitive-set size and its total.
type point struct {
	tau, total int64
	ok         bool
}

// scanTau walks the ranking, growing the sensitive set one entry at a time, and keeps
// the total of the allocation at every size τ = 0, 1, 2, … exactly: the entry's unit's
// count c goes up by one, and the total by 1 (c below the unit's threshold t: one more
// sparse entry), by cost − (t−1) (c reaches t: its t−1 sparse entries become the
// structured module or the whole vector), or by 0 (c above t). So each step is O(1)
// (plus finding the entry's unit, O(log units)), and the search is exact.
//
// How far τ must go. When every unit has cost ≥ t−1 (true whenever α ≥ 1 and β ≥ 1,
// since then t−1 < cost/α ≤ cost), no step lowers the total: it is non-decreasing in
// τ, so the first τ whose total exceeds the budget ends the search; the closest total
// is there or just before it. τ itself may run far past the budget (entries of a
// matrix already structured add nothing), but only that prefix of the ranking is ever
// built, so the cost is O(N) for counting the keys plus O(τ* log τ*) for sorting the
// prefix, with τ* the stopping size, instead of sorting all N entries. (A bound on τ*
// by the budget alone does not exist: one structured matrix may soak up any number of
// top entries.) When some unit has cost < t−1 (α < 1 or β < 1), a step can lower the
// total, and the scan runs to the end of the ranking.
//
// The monotone scan also stops when the total reaches its maximum (every unit that can
// reach its threshold has: all structured modules and whole vectors), as it cannot
// change after that.
//
// closest is the first τ whose total is nearest the budget (a total at or under the
// budget wins a tie); below is the first τ with the largest total not above it.
func scanTau(us []scanUnit, bases []uint32, at orderFunc, fixed, budget int64) (closest, below point, counts []int64) {
	monotone, maxTotal := totalBounds(us, fixed)
	counts = make([]int64, len(us))
	total := fixed
	consider := func(tau int64) {
		d, bd := abs64(total-budget), abs64(closest.total-budget)
		if !closest.ok || d < bd || (d == bd && total <= budget && closest.total > budget) {
			closest = point{tau, total, true}
		}
		if total <= budget && (!below.ok || total > below.total) {
			below = point{tau, total, true}
		}
	}
	consider(0)
	for tau := int64(0); ; tau++ {
		if monotone && (total > budget || total == maxTotal) {
			break
		}
		_, i, ok := at(tau)
		if !ok {
			break
		}
		u := &us[i]
		counts[i]++
		switch c := counts[i]; {
		case c < u.thresh:
			total++
		case c == u.thresh:
			total += u.cost - (u.thresh - 1)
		}
		consider(tau + 1)
	}
	return closest, below, counts
}

// totalBounds says whether the total is non-decreasing in τ (every unit has
// cost ≥ thresh−1) and gives the total with every candidate sensitive: the largest one
// when it is non-decreasing.
func totalBounds(us []scanUnit, fixed int64) (monotone bool, maxTotal int64) {
	monotone, maxTotal = true, fixed
	for _, u := range us {
		if u.cost < u.thresh-1 {
			monotone = false
		}
		if u.size >= u.thresh {
			maxTotal += u.cost
		} else {
			maxTotal += u.size
		}
	}
	return monotone, maxTotal
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// selection is an SPT allocation.
type selection struct {
	tau, tauClosest int64
	counts          []int64    // sensitive entries per unit among the top tau
	structured      []bool     // matrix structured / vector whole
	entries         [][]uint32 // per unit: its sparse entries (local indices), fill included
	fill            int64
	total           int64
	note            string
}

// selectSPT runs the τ search and builds the allocation: the closest τ if its total
// is at most the budget or over it by at most 1%, else the largest total under the
// budget; then, if under the budget, the fill (docs/ARCHITECTURE.md, "Why the allocator fills"): with the
// structured matrices and whole vectors fixed, the next most sensitive entries of the
// unstructured matrices (then, if those run out, of the sparse vectors) are added one
// by one until the total equals the budget. Only if the budget is larger than all
// structured modules and whole vectors together does the fill go on to the most
// sensitive entries of the structured matrices, as sparse deltas beside the modules.
//
// When the total is non-decreasing and the budget is at least its largest value (every
// candidate sensitive: all structured modules and whole vectors), no search is needed:
// the allocation is that of τ = all candidates, and the fill starts at once. (The
// search would otherwise rank up to every candidate to find the first τ reaching it.)
func selectSPT(us []scanUnit, bases []uint32, at orderFunc, fixed, budget int64) selection {
	sel := selection{counts: make([]int64, len(us)), structured: make([]bool, len(us)), entries: make([][]uint32, len(us))}
	var chosen point
	if monotone, maxTotal := totalBounds(us, fixed); monotone && budget >= maxTotal {
		var n int64
		for i, u := range us {
			n += u.size
			sel.counts[i] = u.size
			sel.structured[i] = u.size >= u.thresh
			if !sel.structured[i] {
				for k := int64(0); k < u.size; k++ {
					sel.entries[i] = append(sel.entries[i], uint32(k))
				}
			}
		}
		chosen = point{n, maxTotal, true}
		sel.tau, sel.tauClosest, sel.total = n, n, maxTotal
		sel.note = fmt.Sprintf("every candidate sensitive (τ=%d) gives %d trainable parameters, the most the structured modules and whole vectors can take", n, maxTotal)
	} else {
		closest, below, _ := scanTau(us, bases, at, fixed, budget)
		chosen = closest
		if closest.total > budget && float64(closest.total-budget) > 0.01*float64(budget) && below.ok {
			chosen = below
		}
		sel.tau, sel.tauClosest, sel.total = chosen.tau, closest.tau, chosen.total
		// Replay the top tau: counts, then modes, then the sparse entries.
		for t := int64(0); t < chosen.tau; t++ {
			_, i, _ := at(t)
			sel.counts[i]++
		}
		for i, u := range us {
			sel.structured[i] = sel.counts[i] >= u.thresh
		}
		for t := int64(0); t < chosen.tau; t++ {
			id, i, _ := at(t)
			if !sel.structured[i] {
				sel.entries[i] = append(sel.entries[i], id-bases[i])
			}
		}
		sel.note = fmt.Sprintf("sensitive set τ=%d gives %d trainable parameters (closest to the budget at τ=%d: %d)", chosen.tau, chosen.total, closest.tau, closest.total)
	}
	if sel.total >= budget {
		return sel
	}
	var extra int64
	for pass := 0; pass < 3 && sel.total < budget; pass++ {
		from := chosen.tau
		if pass == 2 {
			from = 0 // none of a structured matrix's entries is taken yet
		}
		// Entries this pass may take; it stops when they are all taken, so that the
		// ranking is never built further than needed.
		var free int64
		for i, u := range us {
			switch {
			case pass == 0 && u.matrix && !sel.structured[i], pass == 1 && !u.matrix && !sel.structured[i]:
				free += u.size - int64(len(sel.entries[i]))
			case pass == 2 && u.matrix && sel.structured[i]:
				free += u.size
			}
		}
		for t := from; sel.total < budget && free > 0; t++ {
			id, i, ok := at(t)
			if !ok {
				break
			}
			u := &us[i]
			switch pass {
			case 0: // unstructured matrices
				if !u.matrix || sel.structured[i] {
					continue
				}
			case 1: // sparse vectors
				if u.matrix || sel.structured[i] {
					continue
				}
			case 2: // structured matrices
				if !u.matrix || !sel.structured[i] {
					continue
				}
				extra++
			}
			sel.entries[i] = append(sel.entries[i], id-bases[i])
			sel.total++
			sel.fill++
			free--
		}
	}
	if sel.fill > 0 {
		sel.note += fmt.Sprintf("; then filled the remaining %d with the next most sensitive entries of unstructured matrices (structured set kept), total %d", sel.fill, sel.total)
	}
	if extra > 0 {
		sel.note += fmt.Sprintf(" (the budget exceeds all structured modules and whole vectors together, so %d of them are sparse entries of structured matrices)", extra)
	}
	return sel
}
