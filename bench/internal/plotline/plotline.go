// Package plotline draws the benchmark figures' curves: points joined by a line, with
// symmetric error bars (mean ± std), in one colour and one marker, added to the legend.
package plotline

import (
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Add draws the points xys with their error bars errs on p and names the curve in the
// legend.
func Add(p *plot.Plot, name string, c color.Color, shape draw.GlyphDrawer, xys plotter.XYs, errs plotter.YErrors) error {
	l, sc, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, l.Width = c, vg.Points(2)
	sc.Color, sc.Shape, sc.Radius = c, shape, vg.Points(4)
	eb, err := plotter.NewYErrorBars(struct {
		plotter.XYs
		plotter.YErrors
	}{xys, errs})
	if err != nil {
		return err
	}
	eb.Color, eb.Width, eb.CapWidth = c, vg.Points(1.5), vg.Points(8)
	p.Add(l, sc, eb)
	p.Legend.Add(name, l, sc)
	return nil
}
