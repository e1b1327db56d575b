package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/sensitivity"
	"github.com/sptctl/sptctl/surgery"
)

func allocateCommand() *cli.Command {
	return &cli.Command{
		Name:  "allocate",
		Usage: "spend a trainable-parameter budget where the weights are most sensitive",
		Description: "allocate ranks every block weight by sensitivity and finds the sensitive-set size\n" +
			"whose allocation is closest to --budget: LoRA, Adapter or DoRA modules on matrices with\n" +
			"many sensitive entries (at least cost/alpha), sparse deltas on the others, whole\n" +
			"vectors where at least dim/beta entries are sensitive; the new head and the class\n" +
			"token are counted. --strategy picks a baseline instead (no scores needed).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "base model (ONNX)", Required: true},
			&cli.StringFlag{Name: "scores", Usage: "sensitivity scores from `sptctl sensitivity` (needed by --strategy spt)"},
			&cli.StringFlag{Name: "budget", Usage: "trainable parameters: a count (400000, 0.4M, 400k) or a share of the backbone (0.5%); spt only, baselines have fixed sizes", Value: "0.4M"},
			&cli.StringFlag{Name: "type", Usage: "structured module: " + moduleTypes(), Value: "lora"},
			&cli.IntFlag{Name: "rank", Usage: "rank of the structured modules (" + moduleTypes() + ")", Value: 8},
			&cli.Float64Flag{Name: "alpha", Usage: "a matrix gets a module if its sensitive entries ≥ module cost / alpha", Value: 10},
			&cli.Float64Flag{Name: "beta", Usage: "a vector is tuned whole if its sensitive entries ≥ size / beta", Value: 5},
			&cli.StringFlag{Name: "strategy", Usage: strings.Join(strategies(), " | "), Value: "spt"},
			&cli.IntFlag{Name: "classes", Usage: "task classes (default: from the scores, else the model's head)"},
			&cli.BoolFlag{Name: "keep-head", Usage: "count the model's own head (for `inject --keep-head`) instead of a new one"},
			&cli.StringFlag{Name: "out", Usage: "plan file to write", Value: "plan.json"},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
		},
		Action: func(c *cli.Context) error {
			if err := checkAllocate(c); err != nil {
				return err
			}
			path := c.String("model")
			m, g, v, err := loadViT(path)
			if err != nil {
				return err
			}
			opt := inject.DefaultOptions()
			opt.Type, opt.Strategy = inject.Type(c.String("type")), inject.Strategy(c.String("strategy"))
			opt.Rank, opt.Alpha, opt.Beta, opt.Classes = c.Int("rank"), c.Float64("alpha"), c.Float64("beta"), c.Int("classes")
			if opt.Strategy == inject.SPT || c.IsSet("budget") {
				if opt.Budget, err = inject.ParseBudget(c.String("budget"), inject.BackboneParams(v, g)); err != nil {
					return usagef("--budget: %v", err)
				}
			}
			if c.Bool("keep-head") {
				// The model's own head is trained: the plan counts it, for its classes.
				if c.IsSet("classes") && opt.Classes != v.Head.Out {
					return usagef("allocate: --keep-head keeps the model's head of %d classes; --classes %d disagrees", v.Head.Out, opt.Classes)
				}
				opt.Classes = v.Head.Out
			}
			var scores sensitivity.Scores
			var info *sensitivity.Info
			if sp := c.String("scores"); sp != "" {
				s, in, err := sensitivity.Read(sp)
				if err != nil {
					return err
				}
				if err := in.CheckModel(path, m); err != nil {
					return fmt.Errorf("%s: %w", sp, err)
				}
				scores, info = s, &in
			} else if opt.Strategy == inject.SPT {
				return usagef("allocate: --scores is needed for --strategy spt (run `sptctl sensitivity` first)")
			}
			p, err := allocatePlan(c.App.ErrWriter, g, v, scores, info, opt, c.Bool("keep-head"), c.String("out"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(c.App.Writer, p.Summary())
			}
			printPlan(c.App.Writer, p)
			return nil
		},
	}
}

// allocatePlan is the allocate stage: the plan for v (graph g) from scores taken with
// info's head (both nil for the baselines), saved to out. keepHead: the plan trains
// the model's own head (opt.Classes is its size).
func allocatePlan(log io.Writer, g *surgery.Graph, v *surgery.ViT, scores sensitivity.Scores, info *sensitivity.Info, opt inject.Options, keepHead bool, out string) (*inject.Plan, error) {
	if info != nil {
		if opt.Classes == 0 {
			opt.Classes = info.Classes
		} else if opt.Classes != info.Classes && !keepHead {
			fmt.Fprintf(log, "warning: --classes %d, but the scores were taken with a %d-class head\n", opt.Classes, info.Classes)
		}
		opt.HeadSeed = info.HeadSeed
		opt.Scoring, opt.ScoringHeads = info.Head, info.HeadSeeds
		if !keepHead {
			opt.HeadValues = info.HeadValues // the new head starts where scoring looked
		}
	}
	var s inject.Scores
	if scores != nil {
		s = inject.Scores(scores)
	}
	p, err := inject.Allocate(v, g, s, opt)
	if err != nil {
		return nil, err
	}
	if err := inject.SavePlan(out, p); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "wrote %s\n", out)
	return p, nil
}

// printPlan writes a plan as a block × layer table of modes and parameter counts.
func printPlan(w io.Writer, p *inject.Plan) {
	kinds := surgery.BlockKinds()
	cell := map[string]string{}
	for _, l := range p.Layers {
		s := l.Mode
		if l.Rank > 0 {
			s += fmt.Sprintf("-%d", l.Rank)
		}
		if l.Mode == inject.ModeSparse || len(l.Indices) > 0 && l.Mode != inject.ModeSparse {
			s += fmt.Sprintf(" %s", commas(l.Params))
		}
		cell[l.Name] = s
	}
	vecs := make([]int, p.Blocks)
	vecParams := make([]int64, p.Blocks)
	for _, vp := range p.Vectors {
		if vp.Block >= 0 && vp.Block < p.Blocks {
			vecs[vp.Block]++
			vecParams[vp.Block] += vp.Params
		}
	}
	fmt.Fprintf(w, "strategy %s, type %s, rank %d\n\n", p.Options.Strategy, p.Options.Type, p.Options.Rank)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "block\t")
	for _, k := range kinds {
		fmt.Fprintf(tw, "%s\t", k)
	}
	fmt.Fprintln(tw, "vectors\t")
	for b := 0; b < p.Blocks; b++ {
		fmt.Fprintf(tw, "%d\t", b)
		for _, k := range kinds {
			s := cell[fmt.Sprintf("blocks.%d.%s", b, k)]
			if s == "" {
				s = "-"
			}
			fmt.Fprintf(tw, "%s\t", s)
		}
		fmt.Fprintf(tw, "%d (%s)\t\n", vecs[b], commas(vecParams[b]))
	}
	tw.Flush()
	t := p.Totals
	fmt.Fprintf(w, "\nstructured %s + sparse %s + vectors %s + head %s + class token %s",
		commas(t.Structured), commas(t.SparseEntries), commas(t.Vectors), commas(t.Head), commas(t.ClassToken))
	if t.Dense > 0 {
		fmt.Fprintf(w, " + dense %s", commas(t.Dense))
	}
	fmt.Fprintf(w, "\n= %s trainable", commas(t.Total))
	if p.Budget > 0 {
		fmt.Fprintf(w, " (budget %s, %+.2f%%)", commas(p.Budget), 100*float64(t.Total-p.Budget)/float64(p.Budget))
	}
	fmt.Fprintln(w)
	if p.Note != "" {
		fmt.Fprintln(w, strings.TrimSpace(p.Note))
	}
}

// moduleTypes lists the structured module types for help texts ("lora | adapter | …").
func moduleTypes() string { return strings.Join(moduleTypeNames(), " | ") }
