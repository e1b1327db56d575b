package sensitivity

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

func loadViT(t *testing.T, name string) (*surgery.ViT, map[string][]float32) {
	t.Helper()
	m, err := onnxio.Load("../testdata/" + name + ".onnx")
	if err != nil {
		t.Fatal(err)
	}
	v, err := surgery.FindViT(surgery.New(m))
	if err != nil {
		t.Fatal(err)
	}
	scores := map[string][]float32{}
	for _, in := range m.Graph.Initializer {
		scores[in.GetName()] = make([]float32, onnxio.NumElements(in.Dims))
	}
	return v, scores
}

func TestLayerEntriesOfFusedParts(t *testing.T) {
	for _, name := range []string{"tv_op14_static", "tv_op13_nofold"} { // [in,out] and [out,in] fused
		v, scores := loadViT(t, name)
		b := v.Blocks[0]
		w := scores[b.Linears[0].Weight]
		for i := range w {
			w[i] = float32(i)
		}
		seen := map[float32]int{}
		for _, l := range b.Linears[:3] {
			e := LayerEntries(l, w)
			if len(e) != l.In*l.Out {
				t.Fatalf("%s %s: %d entries, want %d", name, l.Name, len(e), l.In*l.Out)
			}
			for _, x := range e {
				seen[x]++
				// x is the flat index; its output unit must lie in the part's range.
				unit := int(x) % l.TotalOut
				if l.Layout == surgery.OutIn {
					unit = int(x) / l.In
				}
				if unit < l.Offset || unit >= l.Offset+l.Out {
					t.Fatalf("%s %s: entry %v is output unit %d, outside %d..%d", name, l.Name, x, unit, l.Offset, l.Offset+l.Out)
				}
			}
		}
		if len(seen) != len(w) {
			t.Errorf("%s: q, k, v cover %d of %d entries", name, len(seen), len(w))
		}
	}
}

func TestSummarizeFindsTheSensitiveLayer(t *testing.T) {
	v, scores := loadViT(t, "tv_op17_dynamic")
	fc1 := v.Blocks[1].Linears[4]
	k := v.Blocks[0].Linears[1]
	for i := range scores[fc1.Weight] {
		scores[fc1.Weight][i] = 1 + float32(i%7)
	}
	// Only k's columns of the fused matrix score high.
	w := scores[k.Weight]
	for i := 0; i < k.In; i++ {
		for j := k.Offset; j < k.Offset+k.Out; j++ {
			w[i*k.TotalOut+j] = 100
		}
	}
	s, err := Summarize(v, scores, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	if s.Share[1][4] != 1 || s.Share[0][1] != 1 {
		t.Errorf("shares of the sensitive layers: fc1 %v, k %v; want 1, 1", s.Share[1][4], s.Share[0][1])
	}
	if s.Share[0][0] != 0 || s.Share[0][2] != 0 || s.Share[1][5] != 0 {
		t.Errorf("insensitive layers have shares %v", s.Share)
	}
	var buf bytes.Buffer
	s.Print(&buf)
	if !strings.Contains(buf.String(), "100.00%") {
		t.Errorf("table:\n%s", buf.String())
	}
	png := filepath.Join(t.TempDir(), "s.png")
	if err := s.Plot(png, "test"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(png); !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Error("plot is not a PNG")
	}
	delete(scores, fc1.Weight)
	if _, err := Summarize(v, scores, 0.5); err == nil || !strings.Contains(err.Error(), "blocks.1.fc1") {
		t.Errorf("missing scores: error %v should name blocks.1.fc1", err)
	}
}

func TestKthLargestMatchesSorting(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for trial := 0; trial < 50; trial++ {
		var parts [][]float32
		var all []float32
		for p := 0; p < 1+r.IntN(4); p++ {
			v := make([]float32, r.IntN(300))
			for i := range v {
				switch r.IntN(4) {
				case 0:
					v[i] = 0
				case 1:
					v[i] = float32(r.IntN(5)) // ties
				default:
					g := r.NormFloat64() * math.Pow(10, float64(r.IntN(12)-8))
					v[i] = float32(g * g)
				}
			}
			parts = append(parts, v)
			all = append(all, v...)
		}
		if len(all) == 0 {
			continue
		}
		sort.Slice(all, func(i, j int) bool { return all[i] > all[j] })
		for _, k := range []int{1, 1 + r.IntN(len(all)), len(all)} {
			if got := kthLargest(parts, k); got != all[k-1] {
				t.Fatalf("trial %d: k=%d of %d: got %v, want %v", trial, k, len(all), got, all[k-1])
			}
		}
	}
}
