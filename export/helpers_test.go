package export_test

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/injected"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

func randomScores(g *surgery.Graph, seed uint64) inject.Scores {
	return fixture.RandomScores(g, rand.New(rand.NewPCG(seed, 1)))
}

// handPlan tunes every block matrix, cycling through modes (LoRA with extra sparse
// entries on block 0, sparse, and Adapter when adapters is set), and every block
// vector, cycling through whole, sparse and untouched; the class token is trained.
func handPlan(t testing.TB, f fixture.Model, adapters bool, classes int) *inject.Plan {
	t.Helper()
	opt := inject.DefaultOptions()
	opt.Strategy = inject.Linear
	opt.Classes = classes
	p, err := inject.Allocate(f.V, f.G, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	if p.ClassToken == nil {
		p.ClassToken = injected.ClassToken(f.G, f.V)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	modes := []string{inject.ModeLoRA, inject.ModeSparse, inject.ModeLoRA, inject.ModeSparse, inject.ModeSparse}
	if adapters {
		modes = []string{inject.ModeLoRA, inject.ModeAdapter, inject.ModeSparse, inject.ModeAdapter, inject.ModeLoRA, inject.ModeSparse, inject.ModeAdapter}
	}
	injected.Cycle(p, f.V, modes, func(lp inject.LayerPlan, l *surgery.Linear) bool {
		return lp.Mode == inject.ModeSparse || l.Block == 0
	}, rng)
	return p
}

// plans are the plans every fixture is merged with.
func plans(t testing.TB, f fixture.Model) map[string]*inject.Plan {
	t.Helper()
	backbone := inject.BackboneParams(f.V, f.G)
	out := map[string]*inject.Plan{
		"hand":         handPlan(t, f, false, 5),
		"hand_keep":    handPlan(t, f, false, 0),
		"hand_adapter": handPlan(t, f, true, 5),
	}
	for name, o := range map[string]inject.Options{
		"lora":    {Type: inject.LoRA, Budget: backbone / 6},
		"sparse":  {Type: inject.LoRA, Budget: backbone / 50},
		"adapter": {Type: inject.Adapter, Budget: backbone / 6},
		"dora":    {Type: inject.Type(inject.KindDoRA), Budget: backbone / 6},
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
		p, err := inject.Allocate(f.V, f.G, randomScores(f.G, 5), opt)
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
	m := fixture.Clone(base)
	injected.Apply(t, m, p, inject.ApplyOptions{KeepHead: keep, Dropout: 0.1, Seed: 3})
	injected.Perturb(t, m, rand.New(rand.NewPCG(seed, 12)), nil)
	return m
}
