package quantize_test

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/export/quantize"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/ortcheck"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// Tolerances of the quantized fixtures' logits against the fp32 model's, relative to
// the largest fp32 logit (max|q−f| / max|f|), on the fixtures' stored inputs.
const (
	int8Tolerance = 0.05
	int4Tolerance = 0.25
)

// cases run on every fixture, except the ones marked few (on three exporters' graphs:
// separate q/k/v, fused qkv, unfolded transposes), to keep the test short.
var cases = []struct {
	name string
	opt  quantize.Options
	tol  float64
	few  bool
}{
	{"int8", quantize.Options{Bits: 8}, int8Tolerance, false},
	{"int8_fused", quantize.Options{Bits: 8, Form: quantize.Fused}, int8Tolerance, true},
	{"int4_b16", quantize.Options{Bits: 4, BlockSize: 16}, int4Tolerance, true},
	{"int4_b32_acc4", quantize.Options{Bits: 4, AccuracyLevel: 4}, int4Tolerance, false},
}

var few = map[string]bool{"hf_op17": true, "timm_op17": true, "tv_op13_nofold": true}

// TestQuantizedFixturesRunInORT quantizes every fixture every way, runs it with ONNX
// Runtime and compares with the fp32 model; onnx.checker checks the files.
func TestQuantizedFixturesRunInORT(t *testing.T) {
	ortcheck.Init(t)
	dir := t.TempDir()
	var written []string
	for _, path := range fixture.Paths(t) {
		f := fixture.Load(t, path)
		x := ortcheck.Input(t, path, 0)
		want := ortcheck.Run(t, path, x)
		for _, c := range cases {
			if c.few && !few[fixture.Name(path)] {
				continue
			}
			t.Run(fixture.Name(path)+"/"+c.name, func(t *testing.T) {
				m := fixture.Clone(f.M)
				r, err := quantize.Model(m, c.opt)
				if err != nil {
					t.Fatal(err)
				}
				if want := len(uniqueNodes(f)); len(r.Layers) != want {
					t.Errorf("%d layers quantized, want %d (%v)", len(r.Layers), want, r.Layers)
				}
				out := filepath.Join(dir, fixture.Name(path)+"_"+c.name+".onnx")
				got := ortcheck.SaveAndRun(t, m, out, x)
				written = append(written, out)
				rel := fixture.RelDiff(got, want)
				t.Logf("%d layers, weights %d -> %d bytes, rel diff %.3g", len(r.Layers), r.WeightsBefore, r.WeightsAfter, rel)
				if !(rel <= c.tol) {
					t.Errorf("logits differ from fp32 by %.3g (relative), tolerance %g", rel, c.tol)
				}
				if r.WeightsAfter*3 > r.WeightsBefore {
					t.Errorf("quantized weights %d bytes, fp32 %d", r.WeightsAfter, r.WeightsBefore)
				}
			})
		}
	}
	fixture.CheckONNX(t, written)
}

func uniqueNodes(f fixture.Model) map[any]bool {
	s := map[any]bool{}
	for _, l := range append(f.V.Linears(), f.V.Head) {
		s[l.Node] = true
	}
	return s
}

func TestRefusals(t *testing.T) {
	f := fixture.Load(t, fixture.Paths(t)[0])
	for _, opt := range []quantize.Options{{Bits: 3}, {Bits: 8, BlockSize: 32}, {Bits: 4, BlockSize: 24}, {Bits: 4, BlockSize: 8}, {Bits: 4, AccuracyLevel: 2}} {
		if _, err := quantize.Model(fixture.Clone(f.M), opt); err == nil {
			t.Errorf("%+v: no error", opt)
		}
	}
	m := fixture.Clone(f.M)
	if _, err := quantize.Model(m, quantize.Options{Bits: 8}); err != nil {
		t.Fatal(err)
	}
	if q, _ := quantize.Quantized(m); !q {
		t.Error("Quantized: false after Model")
	}
	var rec meta.Quantization
	if ok, err := meta.Get(m, meta.KeyQuantization, &rec); !ok || err != nil || rec.Bits != 8 || rec.Scheme != "int8" || len(rec.Layers) == 0 {
		t.Errorf("metadata %s: %+v (%v, %v)", meta.KeyQuantization, rec, ok, err)
	}
	if _, err := quantize.Model(m, quantize.Options{Bits: 4}); !errors.Is(err, quantize.ErrQuantized) {
		t.Errorf("quantizing twice: %v, want ErrQuantized", err)
	}
	// Without sptctl's record, the quantized operators still give it away.
	var props []*onnxpb.StringStringEntryProto
	for _, p := range m.MetadataProps {
		if p.GetKey() != meta.KeyQuantization {
			props = append(props, p)
		}
	}
	m.MetadataProps = props
	if _, err := quantize.Model(m, quantize.Options{Bits: 8}); !errors.Is(err, quantize.ErrQuantized) || !strings.Contains(err.Error(), "DynamicQuantizeLinear") {
		t.Errorf("quantizing twice without the record: %v", err)
	}
}

// TestScalesMatchNumpy recomputes one layer's int8 per-channel scales and codes, and
// its int4 blocks, with numpy from the fp32 weight and compares with the files.
func TestScalesMatchNumpy(t *testing.T) {
	if exec.Command("/usr/bin/python3", "-c", "import onnx, numpy").Run() != nil {
		t.Skip("python3-onnx or python3-numpy not available")
	}
	path := fixture.Path(t, "tv_op17_dynamic")
	f := fixture.Load(t, path)
	dir := t.TempDir()
	m8, m4 := fixture.Clone(f.M), fixture.Clone(f.M)
	if _, err := quantize.Model(m8, quantize.Options{Bits: 8}); err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Model(m4, quantize.Options{Bits: 4, BlockSize: 16}); err != nil {
		t.Fatal(err)
	}
	p8, p4 := fixture.Save(t, m8, filepath.Join(dir, "int8.onnx")), fixture.Save(t, m4, filepath.Join(dir, "int4.onnx"))
	// blocks.0.fc1: a MatMul whose weight is stored [in, out] (the scale axis is 0);
	// the head: a Gemm whose weight is stored [out, in].
	var checks []string
	for _, l := range []*surgery.Linear{f.V.Blocks[0].Linears[4], f.V.Head} {
		checks = append(checks, fmt.Sprintf("%s %s %v", l.Name, l.Weight, l.Layout == surgery.OutIn))
	}
	script := `
import sys
import numpy as np
import onnx
from onnx import numpy_helper as nh
fp32, q8, q4 = (onnx.load(p) for p in sys.argv[1:4])
W = {t.name: nh.to_array(t) for t in fp32.graph.initializer}
def inits(m): return {t.name: nh.to_array(t) for t in m.graph.initializer}
def node(m, name): return next(n for n in m.graph.node if n.name == name)
I8, I4 = inits(q8), inits(q4)
for arg in sys.argv[4:]:
    layer, wname, out_in = arg.split(" ")
    w = W[wname].astype(np.float32)
    if out_in == "true":
        w = w.T
    k, n = w.shape
    scale = np.abs(w).max(axis=0) / np.float32(127)
    mm, mul = node(q8, layer + "/MatMulInteger"), node(q8, layer + "/scale")
    got_q, got_s = I8[mm.input[1]], I8[mul.input[1]]
    assert got_s.dtype == np.float32 and got_s.shape == (n,), (layer, got_s.shape)
    assert np.array_equal(got_s, scale.astype(np.float32)), (layer, np.abs(got_s - scale).max())
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    assert got_q.dtype == np.int8 and np.array_equal(got_q, q), (layer, "int8 codes")
    # int4: unpack MatMulNBits' blocks and check they reconstruct w within half a step
    nb = node(q4, layer + "/MatMulNBits")
    attrs = {a.name: a.i for a in nb.attribute}
    bs = attrs["block_size"]
    assert attrs["K"] == k and attrs["N"] == n and attrs["bits"] == 4
    codes, sc, zp = I4[nb.input[1]], I4[nb.input[2]], I4[nb.input[3]]
    blocks = (k + bs - 1) // bs
    assert codes.shape == (n, blocks, bs // 2), codes.shape
    c = np.stack([codes & 15, codes >> 4], axis=-1).reshape(n, blocks * bs)[:, :k]
    z = np.stack([zp & 15, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks]
    sc = sc.reshape(n, blocks)
    deq = (c.astype(np.float32) - np.repeat(z, bs, axis=1)[:, :k]) * np.repeat(sc, bs, axis=1)[:, :k]
    err = np.abs(deq - w.T)
    assert (err <= np.repeat(sc, bs, axis=1)[:, :k] * 0.5001 + 1e-7).all(), (layer, err.max())
    lo = np.minimum(w.T.reshape(n, blocks, bs).min(axis=2), 0) if k % bs == 0 else None
    if lo is not None:
        hi = np.maximum(w.T.reshape(n, blocks, bs).max(axis=2), 0)
        assert np.allclose(sc, (hi - lo) / 15, rtol=1e-6), (layer, "int4 scales")
    print(layer, "ok", n, "channels")
`
	out, err := exec.Command("/usr/bin/python3", append([]string{"-c", script, path, p8, p4}, checks...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("numpy check: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
