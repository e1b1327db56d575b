package inject

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Validate refuses every hand edit of a plan that does not fit the model, with one line
// naming what is wrong, and never changes the model. Each edit goes through plan.json
// (SavePlan / DecodePlan) as a user's edit would, then Validate.
func TestValidateRefusesEditedPlans(t *testing.T) {
	f := fixture.Load(t, "../testdata/tv_op14_static.onnx")
	orig, _ := onnxio.Encode(f.M)
	good := MixedPlan(t, f, 1)
	if err := Validate(f.M, good, ApplyOptions{}); err != nil {
		t.Fatalf("good plan: %v", err)
	}
	first := func(p *Plan, mode string) *LayerPlan {
		for i := range p.Layers {
			if p.Layers[i].Mode == mode {
				return &p.Layers[i]
			}
		}
		t.Fatalf("mixed plan has no %s layer", mode)
		return nil
	}
	firstVec := func(p *Plan, mode string) *VectorPlan {
		for i := range p.Vectors {
			if p.Vectors[i].Mode == mode {
				return &p.Vectors[i]
			}
		}
		t.Fatalf("mixed plan has no %s vector", mode)
		return nil
	}
	for _, c := range []struct {
		name    string
		edit    func(p *Plan)
		recount bool // recompute the totals after the edit (a careful hand edit)
		want    string
	}{
		{"layer not in the model", func(p *Plan) { p.Layers[0].Name = "blocks.99.q" }, true, "blocks.99.q is not in this model"},
		{"unknown weight", func(p *Plan) { p.Layers[0].Weight = "no_such_weight" }, true, "does not match the model"},
		{"zero rank", func(p *Plan) { first(p, ModeLoRA).Rank = 0 }, false, "rank 0"},
		{"negative rank", func(p *Plan) { first(p, ModeAdapter).Rank = -3 }, false, "rank -3"},
		{"rank above the matrix", func(p *Plan) {
			l := first(p, ModeLoRA)
			l.Rank = 1_000_000_000
			l.Params = structuredCost(LoRA, int64(l.Rank), int64(l.In), int64(l.Out)) + int64(len(l.Indices))
		}, true, "rank 1000000000, want 1 to"},
		{"wrong size", func(p *Plan) { first(p, ModeSparse).In *= 2 }, true, "does not match the model"},
		{"index out of range", func(p *Plan) {
			l := first(p, ModeSparse)
			l.Indices[len(l.Indices)-1] = 1 << 40
		}, false, "outside"},
		{"duplicate index", func(p *Plan) {
			l := first(p, ModeSparse)
			l.Indices[1] = l.Indices[0]
		}, false, "not ascending"},
		{"negative index", func(p *Plan) { first(p, ModeSparse).Indices[0] = -1 }, false, "non-negative"},
		{"vector not in the model", func(p *Plan) { p.Vectors[0].Name = "blocks.99.q.bias" }, true, "not in this model"},
		{"vector index out of range", func(p *Plan) {
			v := firstVec(p, ModeSparse)
			v.Indices[len(v.Indices)-1] = 1 << 30
		}, false, "outside"},
		{"vector size", func(p *Plan) { firstVec(p, ModeFull).Size = -1 }, true, "size -1"},
		{"layer count", func(p *Plan) { first(p, ModeSparse).Params++ }, true, "params"},
		{"stated totals", func(p *Plan) { p.Totals.SparseEntries++; p.Totals.Total++ }, false, "totals"},
		{"stated total", func(p *Plan) { p.Totals.Total = 5 }, false, "totals"},
		{"classes", func(p *Plan) {
			p.Head.Classes = 1_000_000_000_000
			p.Head.Params = int64(p.Head.In+1) * int64(p.Head.Classes)
		}, true, "class count from 1 to 100000"},
		{"class token", func(p *Plan) { p.ClassToken.Params = 7 }, true, "class token"},
		{"twice", func(p *Plan) { p.Layers = append(p.Layers, p.Layers[0]) }, true, "twice"},
	} {
		p := MixedPlan(t, f, 1)
		c.edit(p)
		if c.recount {
			p.recount()
		}
		b, _ := json.Marshal(p)
		err := func() error {
			q, err := DecodePlan(b)
			if err != nil {
				return err
			}
			return Validate(f.M, q, ApplyOptions{})
		}()
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want one line saying %q", c.name, err, c.want)
		}
		if now, _ := onnxio.Encode(f.M); !bytes.Equal(orig, now) {
			t.Fatalf("%s: Validate changed the model", c.name)
		}
	}
}

// Allocate refuses ranks and class counts no model can use, before it allocates.
func TestAllocateLimits(t *testing.T) {
	f := fixture.Load(t, "../testdata/tv_op14_static.onnx")
	mr := MaxRank(f.V)
	if mr <= 0 {
		t.Fatalf("MaxRank = %d", mr)
	}
	for _, c := range []struct {
		name string
		edit func(o *Options)
		want string
	}{
		{"rank 1e9", func(o *Options) { o.Rank = 1_000_000_000 }, "rank 1000000000"},
		{"rank above the smallest matrix", func(o *Options) { o.Rank = mr + 1 }, "want 1 to"},
		{"classes 1e12", func(o *Options) { o.Classes = 1_000_000_000_000 }, "class count from 1 to 100000"},
	} {
		opt := DefaultOptions()
		opt.Strategy = Uniform
		c.edit(&opt)
		if _, err := Allocate(f.V, f.G, nil, opt); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	opt := DefaultOptions()
	opt.Strategy, opt.Rank = Uniform, mr
	if _, err := Allocate(f.V, f.G, nil, opt); err != nil {
		t.Errorf("rank %d (the limit): %v", mr, err)
	}
}

// FuzzDecodePlan feeds arbitrary JSON to DecodePlan and what it accepts to Validate
// against a fixture: neither may panic, and Validate must leave the model as it was.
// testdata/fuzz/FuzzDecodePlan holds plans allocate wrote for the fixture as seeds.
func FuzzDecodePlan(f *testing.F) {
	m := fixture.Load(f, "../testdata/tv_op14_static.onnx")
	orig, _ := onnxio.Encode(m.M)
	f.Add([]byte(`{"version":1,"base_fingerprint":"sha256:x","head":{"in":4,"classes":2,"params":10},"totals":{"head":10,"total":10}}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodePlan(b)
		if err != nil {
			return
		}
		if err := Validate(m.M, p, ApplyOptions{}); err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error of more than one line: %q", err)
			}
			return
		}
		if now, _ := onnxio.Encode(m.M); !bytes.Equal(orig, now) {
			t.Fatal("Validate changed the model")
		}
	})
}

// A model with an op the trainer cannot run is refused by Allocate, naming the node,
// instead of failing only when training compiles it.
func TestAllocateRefusesUnsupportedOps(t *testing.T) {
	f := fixture.Load(t, "../testdata/tv_op14_static.onnx")
	f.M.Graph.Node = append(f.M.Graph.Node, &onnxpb.NodeProto{Name: proto.String("odd"), OpType: proto.String("NonMaxSuppression"),
		Input: []string{f.M.Graph.Input[0].GetName()}, Output: []string{"odd_out"}})
	f.G.Reindex()
	opt := DefaultOptions()
	opt.Strategy = Uniform
	_, err := Allocate(f.V, f.G, nil, opt)
	if err == nil || !strings.Contains(err.Error(), `node "odd": op NonMaxSuppression is not supported`) {
		t.Fatalf("got %v", err)
	}
}
