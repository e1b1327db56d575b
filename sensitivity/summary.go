package sensitivity

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/sptctl/sptctl/surgery"
)

// LayerEntries returns the scores of the entries of l's (logical) weight matrix, in
// its stored initializer's order, from the scores of the whole initializer. For a
// fused q/k/v part that is the part's columns ([in,out] layout) or rows ([out,in]).
func LayerEntries(l *surgery.Linear, weight []float32) []float32 {
	if !l.Fused {
		return weight
	}
	out := make([]float32, 0, l.In*l.Out)
	if l.Layout == surgery.OutIn {
		return append(out, weight[l.Offset*l.In:(l.Offset+l.Out)*l.In]...)
	}
	for i := 0; i < l.In; i++ {
		row := weight[i*l.TotalOut:]
		out = append(out, row[l.Offset:l.Offset+l.Out]...)
	}
	return out
}

// Summary is how the most sensitive entries spread over a ViT: for each block and
// each of its six layers (q, k, v, proj, fc1, fc2), the share of the layer's weights
// that are among the top Top fraction of all block weights and vectors.
type Summary struct {
	Top   float64     `json:"top"`
	Kinds []string    `json:"layers"`
	Share [][]float64 `json:"share"`  // [block][layer]: sensitive / weights of the layer
	Count [][]int     `json:"count"`  // [block][layer]: sensitive entries
	Block []float64   `json:"blocks"` // per block: share of its weights (matrices and vectors)
	Kind  []float64   `json:"kinds"`  // per layer type over all blocks
	Total int         `json:"sensitive"`
	Of    int         `json:"candidates"`
}

// Summarize computes the Summary of scores (one []float32 per initializer name) for
// the top fraction top (e.g. 0.004) of all block entries.
func Summarize(v *surgery.ViT, scores map[string][]float32, top float64) (*Summary, error) {
	var parts [][]float32 // every block entry's score, in pieces, for the threshold
	layers := v.Linears()
	entries := make([][]float32, len(layers))
	for i, l := range layers {
		w, ok := scores[l.Weight]
		if !ok {
			return nil, fmt.Errorf("no scores for %s (initializer %q)", l.Name, l.Weight)
		}
		if len(w) != l.In*l.TotalOut {
			return nil, fmt.Errorf("scores for %s: %d values, want %d", l.Name, len(w), l.In*l.TotalOut)
		}
		entries[i] = LayerEntries(l, w)
		parts = append(parts, entries[i])
	}
	vecs := v.Vectors()
	vecEntries := make([][]float32, len(vecs))
	for i, vec := range vecs {
		s, ok := scores[vec.Init]
		if !ok || len(s) < vec.Offset+vec.Size {
			return nil, fmt.Errorf("no scores for %s (initializer %q)", vec.Name, vec.Init)
		}
		vecEntries[i] = s[vec.Offset : vec.Offset+vec.Size]
		parts = append(parts, vecEntries[i])
	}
	total := 0
	for _, p := range parts {
		total += len(p)
	}
	k := int(float64(total) * top)
	if k < 1 {
		k = 1
	}
	threshold := kthLargest(parts, k)
	sum := &Summary{Top: top, Of: total}
	for _, kd := range surgery.BlockKinds() {
		sum.Kinds = append(sum.Kinds, string(kd))
	}
	nb := len(v.Blocks)
	sum.Share, sum.Count = make([][]float64, nb), make([][]int, nb)
	sum.Block, sum.Kind = make([]float64, nb), make([]float64, 6)
	blockSize, kindSize, kindCount, blockCount := make([]int, nb), make([]int, 6), make([]int, 6), make([]int, nb)
	for b := range sum.Share {
		sum.Share[b], sum.Count[b] = make([]float64, 6), make([]int, 6)
	}
	count := func(s []float32) int {
		n := 0
		for _, x := range s {
			if x >= threshold && x > 0 {
				n++
			}
		}
		return n
	}
	for i, l := range layers {
		c, j := count(entries[i]), i%6
		sum.Count[l.Block][j] = c
		sum.Share[l.Block][j] = float64(c) / float64(len(entries[i]))
		blockCount[l.Block] += c
		blockSize[l.Block] += len(entries[i])
		kindCount[j] += c
		kindSize[j] += len(entries[i])
		sum.Total += c
	}
	for i, vec := range vecs {
		c := count(vecEntries[i])
		blockCount[vec.Block] += c
		blockSize[vec.Block] += vec.Size
		sum.Total += c
	}
	for b := range sum.Block {
		sum.Block[b] = float64(blockCount[b]) / float64(blockSize[b])
	}
	for j := range sum.Kind {
		sum.Kind[j] = float64(kindCount[j]) / float64(kindSize[j])
	}
	return sum, nil
}

// kthLargest returns the k-th largest (1-based) of the values in parts, which are
// squared gradients: non-negative, so their float32 bit patterns order as the values
// do. Two counting passes over 16-bit halves of the bits find it in linear time
// without copying or sorting (vit_b_16 has 85M entries).
func kthLargest(parts [][]float32, k int) float32 {
	var hist [1 << 16]int
	for _, p := range parts {
		for _, x := range p {
			hist[math.Float32bits(x)>>16]++
		}
	}
	hi := uint32(0)
	for b := len(hist) - 1; b >= 0; b-- {
		if k <= hist[b] {
			hi = uint32(b)
			break
		}
		k -= hist[b]
	}
	hist = [1 << 16]int{}
	for _, p := range parts {
		for _, x := range p {
			if bits := math.Float32bits(x); bits>>16 == hi {
				hist[bits&0xffff]++
			}
		}
	}
	for b := len(hist) - 1; b >= 0; b-- {
		if k <= hist[b] {
			return math.Float32frombits(hi<<16 | uint32(b))
		}
		k -= hist[b]
	}
	return 0
}

// Print writes the summary as a table: blocks down, layers across, in percent.
func (s *Summary) Print(w io.Writer) {
	fmt.Fprintf(w, "share of each layer's weights among the top %.2g%% most sensitive (%d of %d entries)\n", 100*s.Top, s.Total, s.Of)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "block\t")
	for _, k := range s.Kinds {
		fmt.Fprintf(tw, "%s\t", k)
	}
	fmt.Fprintln(tw, "all\t")
	for b, row := range s.Share {
		fmt.Fprintf(tw, "%d\t", b)
		for _, x := range row {
			fmt.Fprintf(tw, "%.2f%%\t", 100*x)
		}
		fmt.Fprintf(tw, "%.2f%%\t\n", 100*s.Block[b])
	}
	fmt.Fprint(tw, "all\t")
	for _, x := range s.Kind {
		fmt.Fprintf(tw, "%.2f%%\t", 100*x)
	}
	fmt.Fprintln(tw, "\t")
	tw.Flush()
}

// Plot draws the summary as a PNG (or SVG/PDF, by extension) at path: one group of
// bars per block (depth), one bar per layer type (operation), the figure the SPT
// paper draws to show where sensitive weights sit.
func (s *Summary) Plot(path, title string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "block (depth)"
	p.Y.Label.Text = fmt.Sprintf("%% of the layer's weights in the top %.2g%%", 100*s.Top)
	width := vg.Points(6)
	palette := []color.RGBA{{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255}, {214, 39, 40, 255}, {148, 103, 189, 255}, {140, 86, 75, 255}}
	for j, kind := range s.Kinds {
		vals := make(plotter.Values, len(s.Share))
		for b := range s.Share {
			vals[b] = 100 * s.Share[b][j]
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		bars.LineStyle.Width = 0
		bars.Color = palette[j%len(palette)]
		bars.Offset = width * vg.Length(j-len(s.Kinds)/2)
		p.Add(bars)
		p.Legend.Add(kind, bars)
	}
	p.Legend.Top = true
	p.Y.Min = 0
	names := make([]string, len(s.Share))
	for b := range names {
		names[b] = fmt.Sprint(b)
	}
	p.NominalX(names...)
	w := vg.Length(4+0.9*float64(len(s.Share))) * vg.Inch
	if w > 16*vg.Inch {
		w = 16 * vg.Inch
	}
	if err := p.Save(w, 4*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
