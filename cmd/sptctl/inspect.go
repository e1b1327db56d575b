package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show a ViT's blocks, linear layers, shapes and parameter counts",
		ArgsUsage: "MODEL",
		Description: "inspect finds the transformer's structure from the graph (whatever exporter wrote it):\n" +
			"blocks, their q, k, v, attention-output, fc1 and fc2 layers, and the head.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("inspect: want one MODEL argument, got %d", c.NArg())
			}
			r, err := inspectModel(c.Args().First())
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(c.App.Writer, r)
			}
			r.print(c.App.Writer)
			return nil
		},
	}
}

// inspectReport is what `inspect --json` prints.
type inspectReport struct {
	Model      string         `json:"model"`
	Opset      int64          `json:"opset"`
	Producer   string         `json:"producer"`
	Inputs     []valueInfo    `json:"inputs"`
	Outputs    []valueInfo    `json:"outputs"`
	Params     int64          `json:"params"`
	Backbone   int64          `json:"backbone_params"`
	Blocks     int            `json:"blocks"`
	Dim        int            `json:"dim"`
	Layers     []layerInfo    `json:"layers"`
	Head       headInfo       `json:"head"`
	Embeddings map[string]any `json:"embeddings"`
	// Quantization is what `export --quantize` recorded (its linear layers are no
	// longer float MatMuls, so Layers is empty).
	Quantization *meta.Quantization `json:"quantization,omitempty"`
}

type valueInfo struct {
	Name  string   `json:"name"`
	Shape []string `json:"shape"`
}

type layerInfo struct {
	Name   string `json:"name"`
	Block  int    `json:"block"`
	Op     string `json:"op"`
	In     int    `json:"in"`
	Out    int    `json:"out"`
	Params int    `json:"params"`
	Weight string `json:"weight"`
	Layout string `json:"layout"`
	Bias   string `json:"bias"`
	Fused  bool   `json:"fused"`
	// Columns is the range of output units of the stored (fused) matrix, e.g. "32:64".
	Columns string `json:"columns,omitempty"`
}

type headInfo struct {
	In     int    `json:"in"`
	Out    int    `json:"out"`
	Weight string `json:"weight"`
	Bias   string `json:"bias"`
}

func inspectModel(path string) (*inspectReport, error) {
	m, g, v, err := loadViT(path)
	if err != nil {
		// A quantized export has no float linear layers to find: show its record.
		if m, lerr := onnxio.Load(path); lerr == nil {
			if qn, qerr := quantizationNote(m); qn != nil && qerr == nil {
				return inspectQuantized(path, m, surgery.New(m), qn), nil
			}
		}
		return nil, err
	}
	// A model the trainer cannot run is refused here rather than at train time (a
	// quantized export, which only ONNX Runtime runs, is shown as it is).
	if qn, _ := quantizationNote(m); qn == nil {
		if err := engine.CheckOps(m.GetGraph()); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return inspectLoaded(path, m, g, v), nil
}

// inspectLoaded describes a loaded model (path is only reported).
func inspectLoaded(path string, m *onnxpb.ModelProto, g *surgery.Graph, v *surgery.ViT) *inspectReport {
	r := &inspectReport{
		Model:    path,
		Opset:    onnxio.Opset(m),
		Producer: strings.TrimSpace(m.GetProducerName() + " " + m.GetProducerVersion()),
		Blocks:   len(v.Blocks),
		Dim:      v.Dim,
		Head:     headInfo{In: v.Head.In, Out: v.Head.Out, Weight: v.Head.Weight, Bias: v.Head.Bias},
		Embeddings: map[string]any{
			"patch": v.PatchEmbed, "class_token": v.ClassToken, "position": v.PosEmbed,
		},
	}
	for _, in := range m.Graph.Input {
		if g.Initializer(in.GetName()) == nil {
			r.Inputs = append(r.Inputs, describe(in))
		}
	}
	for _, out := range m.Graph.Output {
		r.Outputs = append(r.Outputs, describe(out))
	}
	r.Params = parameterCount(g)
	for _, l := range v.Linears() {
		li := layerInfo{Name: l.Name, Block: l.Block, Op: string(l.Kind), In: l.In, Out: l.Out, Params: l.Params(),
			Weight: l.Weight, Layout: l.Layout.String(), Bias: l.Bias, Fused: l.Fused}
		if l.Fused {
			li.Columns = fmt.Sprintf("%d:%d", l.Offset, l.Offset+l.Out)
		}
		r.Layers = append(r.Layers, li)
	}
	r.Backbone = r.Params - int64(v.Head.Params())
	return r
}

func describe(v *onnxpb.ValueInfoProto) valueInfo {
	vi := valueInfo{Name: v.GetName()}
	for _, d := range v.GetType().GetTensorType().GetShape().GetDim() {
		switch d.Value.(type) {
		case *onnxpb.TensorShapeProto_Dimension_DimParam:
			vi.Shape = append(vi.Shape, d.GetDimParam())
		case *onnxpb.TensorShapeProto_Dimension_DimValue:
			vi.Shape = append(vi.Shape, fmt.Sprint(d.GetDimValue()))
		default:
			vi.Shape = append(vi.Shape, "?")
		}
	}
	return vi
}

func (r *inspectReport) print(w io.Writer) {
	if r.Quantization != nil {
		r.printQuantized(w)
		return
	}
	fmt.Fprintf(w, "model       %s\n", r.Model)
	fmt.Fprintf(w, "opset       %d (%s)\n", r.Opset, r.Producer)
	for _, in := range r.Inputs {
		fmt.Fprintf(w, "input       %s [%s]\n", in.Name, strings.Join(in.Shape, " "))
	}
	for _, out := range r.Outputs {
		fmt.Fprintf(w, "output      %s [%s]\n", out.Name, strings.Join(out.Shape, " "))
	}
	fmt.Fprintf(w, "parameters  %s (backbone %s, head %s)\n", commas(r.Params), commas(r.Backbone), commas(r.Params-r.Backbone))
	fmt.Fprintf(w, "blocks      %d, hidden size %d\n\n", r.Blocks, r.Dim)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "block\tlayer\tin\tout\tparams\tweight\tlayout")
	for _, l := range r.Layers {
		weight := l.Weight
		if l.Fused {
			weight += "[" + l.Columns + "]"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s\t%s\n", l.Block, l.Op, l.In, l.Out, commas(int64(l.Params)), weight, l.Layout)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nhead        %d -> %d classes (%s)\n", r.Head.In, r.Head.Out, r.Head.Weight)
}

// commas writes n with thousands separators.
func commas(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + commas(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parameterCount counts a model's parameters as the framework that exported it did.
// Exporters de-duplicate equal tensors into one initializer and re-expose it through an
// Identity node under each parameter's name, and a merged export keeps that structure:
// so every Identity alias of an initializer is a parameter, and an initializer is one
// itself only where a node other than an Identity reads it.
func parameterCount(g *surgery.Graph) int64 {
	var n int64
	for _, t := range g.Proto().GetInitializer() {
		direct := g.IsOutput(t.GetName())
		for _, c := range g.Consumers(t.GetName()) {
			direct = direct || c.GetOpType() != "Identity"
		}
		if direct {
			n += onnxio.NumElements(t.Dims)
		}
	}
	for _, node := range g.Nodes() {
		if node.GetOpType() == "Identity" && len(node.Input) == 1 {
			if t := g.Initializer(g.Source(node.Input[0])); t != nil {
				n += onnxio.NumElements(t.Dims)
			}
		}
	}
	return n
}
