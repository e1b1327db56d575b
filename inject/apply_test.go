package inject

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// MixedPlan is a hand-made plan that exercises every kind of rewrite: LoRA, Adapter and
// sparse on fused parts and plain layers, whole, sparse and partly-whole fused vectors,
// the class token.
func MixedPlan(t testing.TB, f fixture.Model, seed uint64) *Plan {
	t.Helper()
	opt := DefaultOptions()
	opt.Strategy = Linear
	p, err := Allocate(f.V, f.G, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	p.Options.Strategy = "mixed"
	if tk := f.G.Initializer(f.V.ClassToken); tk != nil {
		p.ClassToken = &TensorPlan{Name: "class_token", Init: f.V.ClassToken, Params: onnxio.NumElements(tk.Dims)}
	}
	us, err := units(f.V, f.G)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 3))
	pick := func(u *unit, n int) []int64 {
		var idx []int64
		for _, k := range rng.Perm(int(u.sp.size()))[:n] {
			idx = append(idx, u.sp.flat(int64(k)))
		}
		slices.Sort(idx)
		return idx
	}
	modes := [2][6]string{{ModeLoRA, ModeSparse, ModeAdapter, ModeSparse, ModeLoRA, ModeAdapter}, {ModeAdapter, ModeLoRA, ModeSparse, ModeLoRA, ModeSparse, ModeAdapter}}
	vmodes := map[string][2]string{
		"q.bias": {ModeFull, ModeFull}, "k.bias": {ModeSparse, ModeFull}, "v.bias": {"", ModeFull},
		"norm1.scale": {ModeFull, ""}, "norm1.shift": {ModeSparse, ""}, "proj.bias": {ModeFull, ModeSparse},
		"norm2.scale": {ModeSparse, ModeFull}, "norm2.shift": {"", ModeSparse}, "fc1.bias": {ModeFull, ""}, "fc2.bias": {ModeSparse, ModeSparse},
	}
	i := 0
	for j := range us {
		u := &us[j]
		b := u.block % 2
		if u.matrix {
			mode := modes[b][i%6]
			i++
			switch mode {
			case ModeSparse:
				l := layerPlan(u, mode, 0, 7)
				l.Indices = pick(u, 7)
				p.Layers = append(p.Layers, l)
			default:
				l := layerPlan(u, mode, 4, structuredCost(Type(mode), 4, u.in, u.out))
				if u.block == 0 && (u.lin.Kind == surgery.Q || u.lin.Kind == surgery.V) {
					// Extra sparse entries beside the module.
					l.Indices = pick(u, 5)
					l.Params += 5
				}
				p.Layers = append(p.Layers, l)
			}
			continue
		}
		short := strings.SplitN(u.name, ".", 3)[2]
		switch vmodes[short][b] {
		case ModeFull:
			p.Vectors = append(p.Vectors, vectorPlan(u, ModeFull, nil))
		case ModeSparse:
			p.Vectors = append(p.Vectors, vectorPlan(u, ModeSparse, pick(u, 3)))
		}
	}
	p.recount()
	if err := p.validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

type variant struct {
	name string
	plan func(t testing.TB, f fixture.Model) *Plan
	opt  ApplyOptions
}

func allocated(o Options) func(testing.TB, fixture.Model) *Plan {
	return func(t testing.TB, f fixture.Model) *Plan {
		t.Helper()
		if o.Budget < 0 { // a fraction of the backbone, in thousandths
			o.Budget = BackboneParams(f.V, f.G) * -o.Budget / 1000
		}
		p, err := Allocate(f.V, f.G, randomScores(f.G, 21), o)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}

func withOpts(mod func(*Options)) Options {
	o := DefaultOptions()
	mod(&o)
	return o
}

// Variants is the set of plans and options every fixture is injected with.
var Variants = []variant{
	{"spt-lora", allocated(withOpts(func(o *Options) { o.Budget = -150 })), ApplyOptions{Seed: 1}},
	{"spt-adapter", allocated(withOpts(func(o *Options) { o.Budget = -150; o.Type = Adapter })), ApplyOptions{Seed: 1, Dropout: 0.1}},
	{"spt-sparse", allocated(withOpts(func(o *Options) { o.Budget = -20 })), ApplyOptions{}},
	{"spt-lora-keephead", allocated(withOpts(func(o *Options) { o.Budget = -100 })), ApplyOptions{KeepHead: true}},
	{"spt-adapter-keephead", allocated(withOpts(func(o *Options) { o.Budget = -100; o.Type = Adapter })), ApplyOptions{KeepHead: true}},
	{"spt-sparse-keephead", allocated(withOpts(func(o *Options) { o.Budget = -20 })), ApplyOptions{KeepHead: true}},
	{"mixed", func(t testing.TB, f fixture.Model) *Plan { return MixedPlan(t, f, 1) }, ApplyOptions{Dropout: 0.1, Seed: 3}},
	{"mixed-keephead", func(t testing.TB, f fixture.Model) *Plan { return MixedPlan(t, f, 2) }, ApplyOptions{KeepHead: true}},
	{"lora-qv", allocated(withOpts(func(o *Options) { o.Strategy = LoRAQV })), ApplyOptions{}},
	{"uniform-adapter", allocated(withOpts(func(o *Options) { o.Strategy = Uniform; o.Type = Adapter })), ApplyOptions{}},
	{"bitfit", allocated(withOpts(func(o *Options) { o.Strategy = BitFit })), ApplyOptions{}},
	{"linear-7", allocated(withOpts(func(o *Options) { o.Strategy = Linear; o.Classes = 7 })), ApplyOptions{Classes: 7}},
	{"full", allocated(withOpts(func(o *Options) { o.Strategy = Full })), ApplyOptions{KeepHead: true}},
	{"spt-lora-3", allocated(withOpts(func(o *Options) { o.Budget = -150; o.Classes = 3; o.HeadSeed = 5 })), ApplyOptions{}},
}

// checkInjected checks an injected model's bookkeeping: the trainable count equals the
// plan's total, every trainable initializer is recorded, the metadata is complete.
func checkInjected(t testing.TB, m *onnxpb.ModelProto, p *Plan) {
	t.Helper()
	n, err := TrainableCount(m)
	if err != nil {
		t.Fatal(err)
	}
	if n != p.Totals.Total {
		t.Fatalf("trainable count %d, plan total %d", n, p.Totals.Total)
	}
	names, _ := meta.Trainable(m)
	s, ok := onnxio.Metadata(m, meta.KeyPlan)
	if !ok {
		t.Fatal("no plan in metadata")
	}
	stored, err := DecodePlan([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	recorded := map[string]bool{}
	for _, r := range stored.Injected {
		if r.Trainable {
			recorded[r.Init] = true
		}
	}
	for _, name := range names {
		if !recorded[name] {
			t.Errorf("trainable %s has no record", name)
		}
	}
	if len(recorded) != len(names) {
		t.Errorf("%d trainable records, %d trainable initializers", len(recorded), len(names))
	}
	var fp string
	var classes int
	meta.Get(m, meta.KeyClasses, &classes)
	fp, _ = onnxio.Metadata(m, meta.KeyBaseFingerprint)
	if fp != p.BaseFingerprint || classes != p.Head.Classes {
		t.Errorf("metadata fingerprint %q classes %d", fp, classes)
	}
	// Every node's inputs exist; the graph is sorted.
	g := surgery.New(m)
	if err := g.TopoSort(); err != nil {
		t.Fatal(err)
	}
}

func TestApplyEveryFixture(t *testing.T) {
	dir := t.TempDir()
	var written []string
	for _, path := range fixture.Paths(t) {
		for _, vr := range Variants {
			name := fixture.Name(path) + "_" + vr.name
			t.Run(name, func(t *testing.T) {
				f := fixture.Load(t, path)
				p := vr.plan(t, f)
				before, _ := proto.Marshal(p2proto(p))
				if err := Apply(f.M, p, vr.opt); err != nil {
					t.Fatal(err)
				}
				if after, _ := proto.Marshal(p2proto(p)); !bytes.Equal(before, after) {
					t.Error("Apply changed the plan")
				}
				checkInjected(t, f.M, p)
				out := filepath.Join(dir, name+".onnx")
				if err := onnxio.Save(out, f.M); err != nil {
					t.Fatal(err)
				}
				written = append(written, out)
				// The head's class dimension follows the plan.
				dims := f.M.GetGraph().GetOutput()[0].GetType().GetTensorType().GetShape().GetDim()
				if got := dims[len(dims)-1].GetDimValue(); got != int64(p.Head.Classes) {
					t.Errorf("output class dimension %d, want %d", got, p.Head.Classes)
				}
			})
		}
	}
	fixture.CheckONNX(t, written)
}

// p2proto wraps a plan's JSON in a protobuf string for a cheap deep comparison.
func p2proto(p *Plan) *onnxpb.StringStringEntryProto {
	b, _ := jsonMarshal(p)
	return &onnxpb.StringStringEntryProto{Value: proto.String(string(b))}
}

func TestApplyRefuses(t *testing.T) {
	a := fixture.Load(t, "../testdata/tv_op14_static.onnx")
	b := fixture.Load(t, "../testdata/tv_op17_static_b1.onnx") // same shapes, other weights
	pa := MixedPlan(t, a, 1)
	orig, _ := onnxio.Encode(b.M)
	unchanged := func(name string) {
		t.Helper()
		now, _ := onnxio.Encode(b.M)
		if !bytes.Equal(orig, now) {
			t.Fatalf("%s: the model was changed by a refused Apply", name)
		}
	}
	err := Apply(b.M, pa, ApplyOptions{})
	if err == nil || !strings.Contains(err.Error(), "another model") {
		t.Fatalf("plan for another model: %v", err)
	}
	unchanged("another model")
	pb := MixedPlan(t, b, 1)
	for _, c := range []struct {
		name string
		mod  func(p *Plan)
		opt  ApplyOptions
		want string
	}{
		{"classes", nil, ApplyOptions{Classes: 5}, "plan was made for 10"},
		{"dropout", nil, ApplyOptions{Dropout: 1}, "dropout"},
		{"keep head", func(p *Plan) { p.Head.Classes = 4; p.Head.Params = int64(p.Head.In+1) * 4; p.recount() }, ApplyOptions{KeepHead: true}, "keep-head"},
		{"index outside", func(p *Plan) {
			for i := range p.Layers {
				if p.Layers[i].Mode == ModeSparse && p.Layers[i].Fused {
					p.Layers[i].Indices[len(p.Layers[i].Indices)-1] = 1 << 40
				}
			}
		}, ApplyOptions{}, "outside"},
		{"unknown layer", func(p *Plan) { p.Layers[0].Name = "blocks.9.q" }, ApplyOptions{}, "not in this model"},
		{"bad totals", func(p *Plan) { p.Totals.Total++ }, ApplyOptions{}, "totals"},
		{"bad version", func(p *Plan) { p.Version = 3 }, ApplyOptions{}, "version 3"},
		{"params", func(p *Plan) { p.Layers[0].Params++; p.recount() }, ApplyOptions{}, "params"},
		{"head values size", func(p *Plan) {
			p.Head.Values = &HeadValues{Weight: make([]float32, p.Head.In*p.Head.Classes-1), Bias: make([]float32, p.Head.Classes)}
		}, ApplyOptions{}, "values of"},
		{"head values NaN", func(p *Plan) {
			p.Head.Values = &HeadValues{Weight: make([]float32, p.Head.In*p.Head.Classes), Bias: make([]float32, p.Head.Classes)}
			p.Head.Values.Bias[1] = float32(math.NaN())
		}, ApplyOptions{}, "NaN"},
	} {
		p := MixedPlan(t, b, 1)
		if c.mod != nil {
			c.mod(p)
		}
		err := Apply(b.M, p, c.opt)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
		unchanged(c.name)
	}
	// And the good plan works.
	if err := Apply(b.M, pb, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	// An injected model is not the base any more.
	if err := Apply(b.M, pb, ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "another model") {
		t.Fatalf("second Apply: %v", err)
	}
}

func TestUnshareAliasedVectors(t *testing.T) {
	f := fixture.Load(t, "../testdata/tv_op17_alias.onnx")
	p := MixedPlan(t, f, 4)
	// blocks.0.proj.bias and blocks.0.norm1.shift both read conv_proj.bias (aliased zeros).
	if vectorOf(p, "blocks.0.proj.bias").Init != "conv_proj.bias" {
		t.Skip("fixture without the expected alias")
	}
	before, _ := onnxio.Floats(f.G.Initializer("conv_proj.bias"))
	if err := Apply(f.M, p, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	checkInjected(t, f.M, p)
	names, _ := meta.Trainable(f.M)
	if slices.Contains(names, "conv_proj.bias") {
		t.Error("the shared conv_proj.bias was made trainable")
	}
	if !slices.Contains(names, Prefix+"blocks.0.proj.bias") {
		t.Errorf("no un-shared copy of blocks.0.proj.bias in %v", names)
	}
	after, _ := onnxio.Floats(surgery.New(f.M).Initializer("conv_proj.bias"))
	if !slices.Equal(before, after) {
		t.Error("conv_proj.bias changed")
	}
}

func TestPlanSaveLoadCheck(t *testing.T) {
	f := fixture.Load(t, "../testdata/timm_op17.onnx")
	p := allocated(withOpts(func(o *Options) { o.Budget = -100 }))(t, f)
	path := filepath.Join(t.TempDir(), "plan.json")
	if err := SavePlan(path, p); err != nil {
		t.Fatal(err)
	}
	q, err := LoadPlan(path)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := jsonMarshal(p)
	b, _ := jsonMarshal(q)
	if !bytes.Equal(a, b) {
		t.Fatal("plan changed through save and load")
	}
	fp, _ := onnxio.Fingerprint(f.M.GetGraph())
	if err := q.Check(fp); err != nil {
		t.Fatal(err)
	}
	other := fixture.Load(t, "../testdata/timm_op14.onnx")
	fp2, _ := onnxio.Fingerprint(other.M.GetGraph())
	if err := q.Check(fp2); err == nil || !strings.Contains(err.Error(), "another model") {
		t.Fatalf("Check on another model: %v", err)
	}
	raw, _ := os.ReadFile(path)
	for _, c := range []struct{ name, text, want string }{
		{"json", "{", "not a plan"},
		{"no version", `{"layers": []}`, "no version"},
		{"version", strings.Replace(string(raw), `"version": 2`, `"version": 7`, 1), "version 7"},
	} {
		bad := filepath.Join(t.TempDir(), "bad.json")
		os.WriteFile(bad, []byte(c.text), 0o644)
		if _, err := LoadPlan(bad); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if _, err := LoadPlan(filepath.Join(t.TempDir(), "none.json")); err == nil {
		t.Error("missing file loaded")
	}
	var top map[string]any
	if err := jsonUnmarshal(raw, &top); err != nil {
		t.Fatal(err)
	}
	sum, _ := top["summary"].(map[string]any)
	for _, k := range []string{"budget", "trainable", "structured", "sparse_entries", "vectors"} {
		if _, ok := sum[k]; !ok {
			t.Errorf("plan.json summary has no %q", k)
		}
	}
	for _, k := range []string{"version", "base_fingerprint", "options", "layers", "vectors", "totals", "budget", "head"} {
		if _, ok := top[k]; !ok {
			t.Errorf("plan.json has no %q", k)
		}
	}
}

func TestHeadInit(t *testing.T) {
	w, b := HeadInit(64, 10, 3)
	w2, _ := HeadInit(64, 10, 3)
	w3, _ := HeadInit(64, 10, 4)
	if !slices.Equal(w, w2) || slices.Equal(w, w3) || len(b) != 10 {
		t.Fatal("HeadInit not deterministic by seed")
	}
	var sum, sq float64
	for _, x := range w {
		if x < -0.04 || x > 0.04 {
			t.Fatalf("value %g beyond 2 std", x)
		}
		sum += float64(x)
		sq += float64(x) * float64(x)
	}
	n := float64(len(w))
	if std := sq/n - (sum/n)*(sum/n); std < 0.00015*0.8 || std > 0.0004 {
		t.Errorf("variance %g, want about 0.02² × 0.77", std)
	}
}
