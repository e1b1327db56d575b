package meta

import "fmt"

// KeyQuantization marks a model whose linear layers `sptctl export --quantize`
// quantized: JSON Quantization.
const KeyQuantization = "sptctl.quantization"

// Quantization is what a quantized export records under KeyQuantization.
type Quantization struct {
	Scheme      string   `json:"scheme"`               // int8 or int4
	Bits        int      `json:"bits"`                 // 8 or 4
	BlockSize   int      `json:"block_size,omitempty"` // int4: weights per scale along the input axis
	Form        string   `json:"form"`                 // the operators that carry it
	Weights     string   `json:"weights"`              // how weights are quantized
	Activations string   `json:"activations"`          // how activations are
	Layers      []string `json:"layers"`               // the quantized linear layers (blocks.0.qkv, ..., head)
}

// Detail is a one-line description: form, weights, activations.
func (q Quantization) Detail() string {
	return fmt.Sprintf("%s; weights %s; activations %s", q.Form, q.Weights, q.Activations)
}
