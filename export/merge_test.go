package export_test

import (
	"flag"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/ortcheck"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

var keepDir = flag.String("keep", "", "write the merged models to this folder")

func nodeList(m *onnxpb.ModelProto) []string {
	var out []string
	for _, n := range m.Graph.Node {
		out = append(out, n.GetOpType()+" "+n.GetName()+" -> "+strings.Join(n.Output, ","))
	}
	return out
}

// isSubsequence reports whether every element of sub appears in seq, in order.
func isSubsequence(sub, seq []string) bool {
	i := 0
	for _, x := range seq {
		if i < len(sub) && sub[i] == x {
			i++
		}
	}
	return i == len(sub)
}

// TestMergeEveryFixture merges LoRA, sparse, hand-made mixed and Adapter plans with
// random trained values on every fixture: ONNX Runtime gives the trained model's
// outputs (relative difference ≤ 1e-5), LoRA/sparse merges have exactly the base
// graph's nodes, Adapter merges keep the base's nodes in order plus the adapters.
func TestMergeEveryFixture(t *testing.T) {
	ortcheck.Init(t)
	dir := t.TempDir()
	var merged []string
	defer func() { fixture.CheckONNX(t, merged) }()
	for _, path := range fixture.Paths(t) {
		name := fixture.Name(path)
		t.Run(name, func(t *testing.T) {
			base := fixture.Load(t, path)
			batch := base.V.Batch
			if batch == 0 {
				batch = 3
			}
			x := ortcheck.Input(t, path, batch)
			baseOut := ortcheck.Run(t, path, x)
			ps := plans(t, base)
			for _, pname := range slices.Sorted(func(y func(string) bool) {
				for k := range ps {
					if !y(k) {
						return
					}
				}
			}) {
				p := ps[pname]
				tm := trained(t, base.M, p, strings.HasSuffix(pname, "_keep"), 21)
				if err := meta.Set(tm, meta.KeyPreprocess, meta.Preprocess{Channels: 1, Height: 2, Width: 3, Mean: []float32{0}, Std: []float32{1}}); err != nil {
					t.Fatal(err)
				}
				want := ortcheck.Run(t, fixture.Save(t, tm, filepath.Join(dir, name+"_"+pname+"_trained.onnx")), x)
				mm := fixture.Clone(tm)
				rep, err := export.Merge(mm, base.M)
				if err != nil {
					t.Fatalf("%s: %v", pname, err)
				}
				// export --merge's memory-saving path gives the same model: MergeInto (no
				// copy of the base) from the trained model without its frozen data
				slim, into := fixture.Clone(tm), fixture.Clone(base.M)
				if err := export.DropFrozen(slim); err != nil {
					t.Fatal(err)
				}
				if _, err := export.MergeInto(slim, into); err != nil {
					t.Fatalf("%s: MergeInto: %v", pname, err)
				}
				if !proto.Equal(slim, mm) {
					t.Errorf("%s: MergeInto after DropFrozen differs from Merge", pname)
				}
				if into.Graph != nil {
					t.Errorf("%s: MergeInto left the base its graph", pname)
				}
				mpath := fixture.Save(t, mm, filepath.Join(dir, name+"_"+pname+"_merged.onnx"))
				got := ortcheck.Run(t, mpath, x)
				merged = append(merged, mpath)
				if *keepDir != "" {
					fixture.Save(t, mm, filepath.Join(*keepDir, name+"_"+pname+"_merged.onnx"))
				}
				r := fixture.RelDiff(got, want)
				if r > 1e-5 {
					t.Errorf("%s: merged vs trained relative difference %.3g", pname, r)
				}
				untrained := fixture.Clone(base.M)
				if err := inject.Apply(untrained, p, inject.ApplyOptions{KeepHead: strings.HasSuffix(pname, "_keep"), Seed: 3}); err != nil {
					t.Fatal(err)
				}
				if moved := fixture.RelDiff(want, ortcheck.Run(t, fixture.Save(t, untrained, filepath.Join(dir, "untrained.onnx")), x)); moved < 1e-2 {
					t.Errorf("%s: the trained values did not move the outputs (%.3g)", pname, moved)
				}
				_ = baseOut
				bn, mn := nodeList(base.M), nodeList(mm)
				if hasAdapters(p) {
					if len(rep.Adapters) == 0 || !isSubsequence(bn, mn) || len(mn) <= len(bn) {
						t.Errorf("%s: adapters %v; merged graph has %d nodes, base %d; base nodes in order: %v", pname, rep.Adapters, len(mn), len(bn), isSubsequence(bn, mn))
					}
				} else if !slices.Equal(bn, mn) {
					t.Errorf("%s: merged nodes differ from the base's (%d vs %d)", pname, len(mn), len(bn))
					for i := range min(len(bn), len(mn)) {
						if bn[i] != mn[i] {
							t.Logf("first difference at %d: base %q, merged %q", i, bn[i], mn[i])
							break
						}
					}
				}
				for _, k := range []string{meta.KeyPlan, meta.KeyTrainable, meta.KeyBaseFingerprint} {
					if _, ok := onnxio.Metadata(mm, k); ok {
						t.Errorf("%s: merged model still has %s", pname, k)
					}
				}
				if _, ok := onnxio.Metadata(mm, meta.KeyPreprocess); !ok {
					t.Errorf("%s: merged model lost %s", pname, meta.KeyPreprocess)
				}
				if _, ok := onnxio.Metadata(mm, meta.KeyMerged); !ok {
					t.Errorf("%s: merged model has no %s note", pname, meta.KeyMerged)
				}
				for _, in := range mm.Graph.Initializer {
					if strings.HasPrefix(in.GetName(), "spt/") && !hasAdapters(p) {
						t.Errorf("%s: merged model keeps injected initializer %s", pname, in.GetName())
					}
				}
				t.Logf("%s: rel %.2g; %s", pname, r, strings.ReplaceAll(strings.TrimSpace(rep.String()), "\n", "; "))
			}
		})
	}
}

func TestMergeRefusesBadInput(t *testing.T) {
	base := fixture.Load(t, fixture.Paths(t)[0])
	if _, err := export.Merge(fixture.Clone(base.M), base.M); err == nil || !strings.Contains(err.Error(), "not made by `sptctl inject`") {
		t.Errorf("merge of a base model: %v", err)
	}
	other := fixture.Load(t, fixture.Paths(t)[1])
	tm := trained(t, base.M, plans(t, base)["lora"], false, 1)
	before := nodeList(tm)
	if _, err := export.Merge(tm, other.M); err == nil || !strings.Contains(err.Error(), "not the one the model was injected from") {
		t.Errorf("merge against another base: %v", err)
	}
	if !slices.Equal(before, nodeList(tm)) {
		t.Error("a failed merge changed the model")
	}
}

// A base head without a bias gets one from inject (an Add); merging puts it into the
// head Gemm's C input, so the node list stays the base's.
func TestMergeHeadWithoutBias(t *testing.T) {
	ortcheck.Init(t)
	dir := t.TempDir()
	for _, path := range []string{"../testdata/tv_op17_dynamic.onnx", "../testdata/tv_op14_static.onnx"} {
		f := fixture.Load(t, path)
		h := f.V.Head.Node
		if h.GetOpType() != "Gemm" || len(h.Input) != 3 {
			t.Fatalf("%s: head %s", path, h.GetOpType())
		}
		h.Input = h.Input[:2]
		f.G.RemoveDeadNodes()
		basePath := fixture.Save(t, f.M, filepath.Join(dir, "nobias.onnx"))
		base := fixture.Load(t, basePath)
		if base.V.Head.Bias != "" {
			t.Fatal("head still has a bias")
		}
		batch := base.V.Batch
		if batch == 0 {
			batch = 2
		}
		x := ortcheck.Input(t, path, batch)
		for _, pname := range []string{"lora", "hand"} {
			tm := trained(t, base.M, plans(t, base)[pname], false, 4)
			want := ortcheck.Run(t, fixture.Save(t, tm, filepath.Join(dir, "trained.onnx")), x)
			mm := fixture.Clone(tm)
			if _, err := export.Merge(mm, base.M); err != nil {
				t.Fatal(err)
			}
			got := ortcheck.Run(t, fixture.Save(t, mm, filepath.Join(dir, "merged.onnx")), x)
			if r := fixture.RelDiff(got, want); r > 1e-5 {
				t.Errorf("%s %s: merged vs trained %.3g", path, pname, r)
			}
			if !slices.Equal(nodeList(base.M), nodeList(mm)) {
				t.Errorf("%s %s: node list differs from the base's", path, pname)
			}
		}
	}
}
