package export_test

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

func fixtures(t testing.TB) []string {
	t.Helper()
	fs, err := filepath.Glob("../testdata/*.onnx")
	if err != nil || len(fs) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	return fs
}

func fixtureName(path string) string { return strings.TrimSuffix(filepath.Base(path), ".onnx") }

type model struct {
	m *onnxpb.ModelProto
	g *surgery.Graph
	v *surgery.ViT
}

func load(t testing.TB, path string) model {
	t.Helper()
	m, err := onnxio.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g := surgery.New(m)
	v, err := surgery.FindViT(g)
	if err != nil {
		t.Fatal(err)
	}
	return model{m, g, v}
}

func clone(m *onnxpb.ModelProto) *onnxpb.ModelProto { return proto.Clone(m).(*onnxpb.ModelProto) }

func randomScores(g *surgery.Graph, seed uint64) inject.Scores {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := inject.Scores{}
	for _, t := range g.Proto().GetInitializer() {
		if t.GetDataType() == onnxio.Float {
			x := make([]float32, onnxio.NumElements(t.Dims))
			for i := range x {
				x[i] = rng.Float32()
			}
			s[t.GetName()] = x
		}
	}
	return s
}

// handPlan tunes every block matrix, cycling through modes (LoRA with extra sparse
// entries on block 0, sparse, and Adapter when adapters is set), and every block
// vector, cycling through whole, sparse and untouched; the class token is trained.
func handPlan(t testing.TB, f model, adapters bool, classes int) *inject.Plan {
	t.Helper()
	opt := inject.DefaultOptions()
	opt.Strategy = inject.Linear
	opt.Classes = classes
	p, err := inject.Allocate(f.v, f.g, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	if p.ClassToken == nil && f.v.ClassToken != "" {
		ct := f.g.Initializer(f.v.ClassToken)
		p.ClassToken = &inject.TensorPlan{Name: "class_token", Init: f.v.ClassToken, Params: onnxio.NumElements(ct.Dims)}
	}
	rng := rand.New(rand.NewPCG(9, 9))
	modes := []string{inject.ModeLoRA, inject.ModeSparse, inject.ModeLoRA, inject.ModeSparse, inject.ModeSparse}
	if adapters {
		modes = []string{inject.ModeLoRA, inject.ModeAdapter, inject.ModeSparse, inject.ModeAdapter, inject.ModeLoRA, inject.ModeSparse, inject.ModeAdapter}
	}
	for i, l := range f.v.Linears() {
		lp := inject.LayerPlan{Name: l.Name, Block: l.Block, Kind: string(l.Kind), Weight: l.Weight, Layout: l.Layout.String(),
			In: l.In, Out: l.Out, Fused: l.Fused, Offset: l.Offset, Mode: modes[i%len(modes)]}
		switch lp.Mode {
		case inject.ModeLoRA:
			lp.Rank, lp.Params = 4, int64(4*(l.In+l.Out))
		case inject.ModeAdapter:
			lp.Rank, lp.Params = 4, int64(2*4*l.Out+4+l.Out)
		}
		if lp.Mode == inject.ModeSparse || (lp.Mode != inject.ModeSparse && l.Block == 0) {
			seen := map[int64]bool{}
			for len(lp.Indices) < 9 {
				o, in := rng.IntN(l.Out), rng.IntN(l.In)
				var fl int64
				if l.Layout == surgery.InOut {
					fl = int64(in*l.TotalOut + l.Offset + o)
				} else {
					fl = int64((l.Offset+o)*l.In + in)
				}
				if !seen[fl] {
					seen[fl] = true
					lp.Indices = append(lp.Indices, fl)
				}
			}
			slices.Sort(lp.Indices)
			lp.Params += int64(len(lp.Indices))
		}
		p.Layers = append(p.Layers, lp)
	}
	for j, vec := range f.v.Vectors() {
		vp := inject.VectorPlan{Name: vec.Name, Block: vec.Block, Init: vec.Init, Offset: vec.Offset, Size: vec.Size}
		switch j % 3 {
		case 0:
			vp.Mode, vp.Params = inject.ModeFull, int64(vec.Size)
		case 1:
			vp.Mode = inject.ModeSparse
			for _, k := range rng.Perm(vec.Size)[:4] {
				vp.Indices = append(vp.Indices, int64(vec.Offset+k))
			}
			slices.Sort(vp.Indices)
			vp.Params = 4
		default:
			continue
		}
		p.Vectors = append(p.Vectors, vp)
	}
	p.Recount()
	return p
}

// plans are the plans every fixture is merged with.
func plans(t testing.TB, f model) map[string]*inject.Plan {
	t.Helper()
	backbone := inject.BackboneParams(f.v, f.g)
	out := map[string]*inject.Plan{
		"hand":         handPlan(t, f, false, 5),
		"hand_keep":    handPlan(t, f, false, 0),
		"hand_adapter": handPlan(t, f, true, 5),
	}
	for name, o := range map[string]inject.Options{
		"lora":    {Type: inject.LoRA, Budget: backbone / 6},
		"sparse":  {Type: inject.LoRA, Budget: backbone / 50},
		"adapter": {Type: inject.Adapter, Budget: backbone / 6},
		"full":    {Strategy: inject.Full},
		"bitfit":  {Strategy: inject.BitFit},
		"lora-qv": {Strategy: inject.LoRAQV, Type: inject.LoRA},
	} {
		opt := inject.DefaultOptions()
		opt.Type, opt.Budget, opt.Classes = o.Type, o.Budget, 5
		if o.Strategy != "" {
			opt.Strategy = o.Strategy
		}
		if opt.Type == "" {
			opt.Type = inject.LoRA
		}
		p, err := inject.Allocate(f.v, f.g, randomScores(f.g, 5), opt)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	return out
}

func hasAdapters(p *inject.Plan) bool {
	return slices.ContainsFunc(p.Layers, func(l inject.LayerPlan) bool { return l.Mode == inject.ModeAdapter })
}

// trained injects p into a copy of base and gives every trainable tensor non-zero
// random values (as training would), so that every fold is exercised.
// With keep, the model's own head is trained (the plan must be for its class count).
func trained(t testing.TB, base *onnxpb.ModelProto, p *inject.Plan, keep bool, seed uint64) *onnxpb.ModelProto {
	t.Helper()
	m := clone(base)
	if err := inject.Apply(m, p, inject.ApplyOptions{KeepHead: keep, Dropout: 0.1, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	sp, err := export.Plan(m)
	if err != nil {
		t.Fatal(err)
	}
	g := surgery.New(m)
	rng := rand.New(rand.NewPCG(seed, 12))
	for _, r := range sp.Injected {
		if !r.Trainable {
			continue
		}
		tp := g.Initializer(r.Init)
		x, err := onnxio.Floats(tp)
		if err != nil {
			t.Fatal(err)
		}
		for i := range x {
			x[i] += float32(rng.NormFloat64() * 0.05)
		}
		if err := onnxio.SetFloats(tp, x); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// input is the fixture's input, repeated to batch images.
func input(t testing.TB, fixture string, batch int64) ort.Tensor {
	t.Helper()
	a, err := npy.Read(strings.TrimSuffix(fixture, ".onnx") + ".input.npy")
	if err != nil {
		t.Fatal(err)
	}
	per := int64(len(a.Float32)) / a.Shape[0]
	data := make([]float32, 0, batch*per)
	for i := int64(0); i < batch; i++ {
		j := i % a.Shape[0]
		data = append(data, a.Float32[j*per:(j+1)*per]...)
	}
	return ort.Tensor{Shape: append([]int64{batch}, a.Shape[1:]...), Data: data}
}

func save(t testing.TB, m *onnxpb.ModelProto, path string) string {
	t.Helper()
	if err := onnxio.Save(path, m); err != nil {
		t.Fatal(err)
	}
	return path
}

func runORT(t testing.TB, path string, x ort.Tensor) []float32 {
	t.Helper()
	out, err := ort.RunFile(path, map[string]ort.Tensor{"input": x})
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return out["logits"].Data
}

// rel is max|a−b| / max|b|.
func rel(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var d, s float64
	for i := range a {
		x := math.Abs(float64(a[i]) - float64(b[i]))
		if math.IsNaN(x) {
			return math.Inf(1)
		}
		d = max(d, x)
		s = max(s, math.Abs(float64(b[i])))
	}
	if s == 0 {
		return d
	}
	return d / s
}

func mustInitORT(t testing.TB) {
	t.Helper()
	if err := ort.Init(); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
}
