package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/sptctl/sptctl/bench/internal/plotline"
)

// ---------- figures ----------

var palette = []color.Color{
	color.RGBA{31, 119, 180, 255}, color.RGBA{255, 127, 14, 255}, color.RGBA{44, 160, 44, 255},
	color.RGBA{214, 39, 40, 255}, color.RGBA{148, 103, 189, 255}, color.RGBA{140, 86, 75, 255},
	color.RGBA{227, 119, 194, 255}, color.RGBA{127, 127, 127, 255}, color.RGBA{188, 189, 34, 255},
}

func styled(p *plot.Plot) {
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.X.Label.TextStyle.Font.Size = vg.Points(11)
	p.Y.Label.TextStyle.Font.Size = vg.Points(11)
	p.X.Tick.Label.Font.Size = vg.Points(10)
	p.Y.Tick.Label.Font.Size = vg.Points(10)
	p.Legend.TextStyle.Font.Size = vg.Points(10)
}

// saveGrid draws plots in a rows × cols grid into one PNG.
func saveGrid(path string, plots [][]*plot.Plot, w, h vg.Length) error {
	img := vgimg.New(w, h)
	dc := draw.New(img)
	rows, cols := len(plots), len(plots[0])
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, t, dc)
	for i := range plots {
		for j := range plots[i] {
			if plots[i][j] != nil {
				plots[i][j].Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	png := vgimg.PngCanvas{Canvas: img}
	if _, err := png.WriteTo(f); err != nil {
		return err
	}
	return f.Close()
}

// plotSensitivity draws, per task, the share of sensitive entries by block depth
// (left column) and by layer type (right column); and one block × layer chart per task.
func plotSensitivity(path string, tasks []string, sens map[string]*sensSummary) error {
	var have []string
	for _, t := range tasks {
		if sens[t] != nil {
			have = append(have, t)
		}
	}
	// common y range per column so the tasks compare at a glance
	maxB, maxK := 0.0, 0.0
	for _, t := range have {
		for _, x := range sens[t].Summary.Blocks {
			maxB = max(maxB, 100*x)
		}
		for _, x := range sens[t].Summary.Kinds {
			maxK = max(maxK, 100*x)
		}
	}
	var grid [][]*plot.Plot
	for i, t := range have {
		s := sens[t].Summary
		bp := plot.New()
		styled(bp)
		bp.Title.Text = fmt.Sprintf("%s: by block depth", t)
		bp.Y.Label.Text = fmt.Sprintf("%% in top %.2g%%", 100*s.Top)
		vals := make(plotter.Values, len(s.Blocks))
		names := make([]string, len(s.Blocks))
		for b, x := range s.Blocks {
			vals[b], names[b] = 100*x, fmt.Sprint(b)
		}
		bars, err := plotter.NewBarChart(vals, vg.Points(22))
		if err != nil {
			return err
		}
		bars.Color, bars.LineStyle.Width = palette[i%len(palette)], 0
		bp.Add(bars)
		if err := addValueLabels(bp, vals, maxB); err != nil {
			return err
		}
		bp.NominalX(names...)
		if i == len(have)-1 {
			bp.X.Label.Text = "block (0 = nearest the input)"
		}
		bp.Y.Min, bp.Y.Max = 0, maxB*1.15

		kp := plot.New()
		styled(kp)
		kp.Title.Text = fmt.Sprintf("%s: by layer type", t)
		kvals := make(plotter.Values, len(s.Kinds))
		for k, x := range s.Kinds {
			kvals[k] = 100 * x
		}
		kb, err := plotter.NewBarChart(kvals, vg.Points(22))
		if err != nil {
			return err
		}
		kb.Color, kb.LineStyle.Width = palette[i%len(palette)], 0
		kp.Add(kb)
		if err := addValueLabels(kp, kvals, maxK); err != nil {
			return err
		}
		kp.NominalX(s.Layers...)
		if i == len(have)-1 {
			kp.X.Label.Text = "layer type (all blocks)"
		}
		kp.Y.Min, kp.Y.Max = 0, maxK*1.15
		grid = append(grid, []*plot.Plot{bp, kp})

		// per task: block × layer grouped bars
		if err := plotBlockLayer(strings.TrimSuffix(path, ".png")+"-"+t+".png", t, s.Top, s.Layers, s.Share); err != nil {
			return err
		}
	}
	return saveGrid(path, grid, 10*vg.Inch, vg.Length(2.6*float64(len(have)))*vg.Inch)
}

// addValueLabels writes each bar's value (in %, two decimals) just above it.
func addValueLabels(p *plot.Plot, vals plotter.Values, top float64) error {
	xys := make(plotter.XYs, len(vals))
	text := make([]string, len(vals))
	for i, v := range vals {
		xys[i].X, xys[i].Y = float64(i), v+0.03*top
		text[i] = fmt.Sprintf("%.2f", v)
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: text})
	if err != nil {
		return err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].XAlign = draw.XCenter
		l.TextStyle[i].Font.Size = vg.Points(9)
	}
	p.Add(l)
	return nil
}

func plotBlockLayer(path, task string, top float64, kinds []string, share [][]float64) error {
	p := plot.New()
	styled(p)
	p.Title.Text = fmt.Sprintf("%s: share of each layer's weights in the top %.2g%% most sensitive", task, 100*top)
	p.X.Label.Text = "block (depth)"
	p.Y.Label.Text = "% of the layer's weights"
	w := vg.Points(9)
	for j, k := range kinds {
		vals := make(plotter.Values, len(share))
		for b := range share {
			vals[b] = 100 * share[b][j]
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color, bars.LineStyle.Width = palette[j%len(palette)], 0
		bars.Offset = w * vg.Length(float64(j)-float64(len(kinds)-1)/2)
		p.Add(bars)
		p.Legend.Add(k, bars)
	}
	names := make([]string, len(share))
	for b := range names {
		names[b] = fmt.Sprint(b)
	}
	p.NominalX(names...)
	p.Legend.Top = true
	p.Y.Min = 0
	return p.Save(9*vg.Inch, 4*vg.Inch, path)
}

// plotSweeps draws one accuracy-vs-budget panel per sweep task, side by side.
func plotSweeps(path string, set settings, sweep map[string][]sweepPoint) error {
	var row []*plot.Plot
	for _, t := range set.Sweeps {
		if pts := sweep[t]; len(pts) > 0 {
			p, err := plotSweep(t, pts)
			if err != nil {
				return err
			}
			row = append(row, p)
		}
	}
	return saveGrid(path, [][]*plot.Plot{row}, vg.Length(7.5*float64(len(row)))*vg.Inch, 5*vg.Inch)
}

// plotSweep draws test top-1 against trainable parameters for LoRA-qv and SPT-LoRA.
func plotSweep(task string, pts []sweepPoint) (*plot.Plot, error) {
	p := plot.New()
	styled(p)
	seeds := fmt.Sprintf("mean ± std over %d seeds", pts[0].QV.N)
	if pts[0].QV.N == 1 {
		seeds = "1 seed"
	}
	p.Title.Text = fmt.Sprintf("%s: test top-1 vs trainable parameters (%s)", task, seeds)
	p.X.Label.Text = "trainable parameters (incl. head and class token), log scale"
	p.Y.Label.Text = "test top-1 (%)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = budgetTicks{pts}
	add := func(name string, c color.Color, get func(sweepPoint) (int64, stat), shape draw.GlyphDrawer) error {
		xys := make(plotter.XYs, len(pts))
		errs := make(plotter.YErrors, len(pts))
		for i, pt := range pts {
			n, s := get(pt)
			xys[i].X, xys[i].Y = float64(n), s.Mean
			errs[i].Low, errs[i].High = s.Std, s.Std
		}
		return plotline.Add(p, name, c, shape, xys, errs)
	}
	ranks := make([]string, len(pts))
	for i, pt := range pts {
		ranks[i] = fmt.Sprint(pt.Rank)
	}
	if err := add("LoRA-qv (rank "+strings.Join(ranks, ", ")+")", palette[0], func(pt sweepPoint) (int64, stat) { return pt.QVCount, pt.QV }, draw.CircleGlyph{}); err != nil {
		return nil, err
	}
	if err := add("SPT-LoRA at the same count", palette[3], func(pt sweepPoint) (int64, stat) { return pt.SPTCnt, pt.SPT }, draw.TriangleGlyph{}); err != nil {
		return nil, err
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Millimeter*3, -vg.Millimeter*2
	p.Add(plotter.NewGrid())
	return p, nil
}

type budgetTicks struct{ pts []sweepPoint }

func (b budgetTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for _, pt := range b.pts {
		ts = append(ts, plot.Tick{Value: float64(pt.QVCount), Label: fmt.Sprintf("%s\nr=%d, %.1f%%", commas(pt.QVCount), pt.Rank, 100*pt.QVShare)})
	}
	return ts
}

// plotMain draws test top-1 per task (groups) and method (bars), mean ± std.
func plotMain(path string, tasks []string, runs []run, precision string) error {
	p := plot.New()
	styled(p)
	p.Title.Text = "test top-1 per task (mean ± std over seeds)"
	if precision != "fp32" {
		p.Title.Text = "test top-1 per task (mean ± std over seeds), " + precision + " suite"
	}
	p.Y.Label.Text = "test top-1 (%)"
	w := vg.Points(16)
	lo := 100.0
	var methods []string
	for _, m := range mainMethods {
		for _, t := range tasks {
			if len(pick(runs, t, m)) > 0 {
				methods = append(methods, m)
				break
			}
		}
	}
	for j, m := range methods {
		vals := make(plotter.Values, len(tasks))
		errs := make(plotter.YErrors, len(tasks))
		for i, t := range tasks {
			s := stats(top1s(pick(runs, t, m), false))
			if s.N == 0 {
				s.Mean, s.Std = 0, 0
			}
			vals[i], errs[i] = s.Mean, struct{ Low, High float64 }{s.Std, s.Std}
			if s.N > 0 {
				lo = min(lo, s.Mean-s.Std)
			}
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color, bars.LineStyle.Width = palette[j%len(palette)], 0
		bars.Offset = w * vg.Length(float64(j)-float64(len(methods)-1)/2)
		p.Add(bars)
		p.Legend.Add(methodLabel[m], bars)
		// error bars at the bar centres
		xys := make(plotter.XYs, len(tasks))
		for i := range tasks {
			xys[i].X, xys[i].Y = float64(i), vals[i]
		}
		eb, err := plotter.NewYErrorBars(struct {
			plotter.XYs
			plotter.YErrors
		}{xys, errs})
		if err != nil {
			return err
		}
		eb.CapWidth = vg.Points(4)
		off := w * vg.Length(float64(j)-float64(len(methods)-1)/2)
		p.Add(offsetErr{eb, off})
	}
	p.NominalX(tasks...)
	p.Y.Min = math.Max(0, math.Floor(lo/10)*10-5)
	p.Y.Max = 100
	p.Add(plotter.NewGrid())
	// the legend goes in a column to the right of the axes
	leg := p.Legend
	p.Legend = plot.NewLegend()
	W, H := 12*vg.Inch, 5*vg.Inch
	img := vgimg.New(W, H)
	dc := draw.New(img)
	legW := 1.9 * vg.Inch
	p.Draw(draw.Crop(dc, 0, -legW, 0, 0))
	leg.Top, leg.Left = true, true
	leg.YOffs = -0.5 * vg.Inch
	leg.Draw(draw.Crop(dc, W-legW+vg.Millimeter*3, 0, 0, 0))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return err
	}
	return f.Close()
}

// offsetErr draws error bars shifted horizontally by off (to sit on a grouped bar).
type offsetErr struct {
	*plotter.YErrorBars
	off vg.Length
}

func (o offsetErr) Plot(c draw.Canvas, p *plot.Plot) {
	c.Rectangle.Min.X += o.off
	c.Rectangle.Max.X += o.off
	o.YErrorBars.Plot(c, p)
}
