package sensitivity

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/safetensors"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Scores are sensitivities keyed by initializer name, each the flattened initializer
// in its stored layout.
type Scores = map[string][]float32

// Info is what a score file records besides the scores.
type Info struct {
	Fingerprint string // onnxio.Fingerprint of the model scored
	Classes     int    // task classes of the head the scores were taken with
	HeadSeed    int64  // seed of that head (inject reuses it)
	Batches     int    // batches accumulated
	BatchSize   int
	Examples    int // images seen
	// Shapes holds each score tensor's shape as the file states it (Read fills it;
	// CheckModel compares it with the model's initializers).
	Shapes map[string][]int64
	// Head is the head the gradients flowed through (inject.HeadRandom, HeadProbe,
	// HeadZeroMean); HeadSeeds the number of random heads averaged.
	Head      string
	HeadSeeds int
	// HeadValues is the probe's or zero-mean head (nil for random heads): the head
	// allocate puts in the plan and inject starts from. HeadTop1 is its top-1 on the
	// HeadExamples images whose features made it.
	HeadValues   *inject.HeadValues `json:"-"`
	HeadTop1     float64            `json:",omitempty"`
	HeadExamples int                `json:",omitempty"`
}

// Names of the head's values in a score file: not initializers of the model.
const (
	headWeightTensor = "sptctl:head.weight"
	headBiasTensor   = "sptctl:head.bias"
)

// Write stores scores and info as safetensors at path (atomically); shapes come from
// the model's initializers.
func Write(path string, m *onnxpb.ModelProto, s Scores, info Info) error {
	f := &safetensors.File{Tensors: map[string]safetensors.Tensor{}, Metadata: map[string]string{
		"format":      "sptctl-sensitivity-1",
		"fingerprint": info.Fingerprint,
		"classes":     strconv.Itoa(info.Classes),
		"head_seed":   strconv.FormatInt(info.HeadSeed, 10),
		"batches":     strconv.Itoa(info.Batches),
		"batch_size":  strconv.Itoa(info.BatchSize),
		"examples":    strconv.Itoa(info.Examples),
		"head":        cmp.Or(info.Head, inject.HeadRandom),
		"head_seeds":  strconv.Itoa(max(info.HeadSeeds, 1)),
	}}
	if h := info.HeadValues; h != nil {
		classes := int64(len(h.Bias))
		if classes == 0 || int64(len(h.Weight))%classes != 0 {
			return fmt.Errorf("write %s: head values of %d weights and %d biases", path, len(h.Weight), len(h.Bias))
		}
		f.Metadata["head_top1"] = strconv.FormatFloat(info.HeadTop1, 'g', -1, 64)
		f.Metadata["head_examples"] = strconv.Itoa(info.HeadExamples)
		f.Tensors[headWeightTensor] = safetensors.Tensor{Shape: []int64{classes, int64(len(h.Weight)) / classes}, Data: h.Weight}
		f.Tensors[headBiasTensor] = safetensors.Tensor{Shape: []int64{classes}, Data: h.Bias}
	}
	shapes := map[string][]int64{}
	for _, t := range m.GetGraph().GetInitializer() {
		shapes[t.GetName()] = t.Dims
	}
	for name, v := range s {
		shape, ok := shapes[name]
		if !ok {
			return fmt.Errorf("write %s: scores for %q, which the model does not have", path, name)
		}
		f.Tensors[name] = safetensors.Tensor{Shape: shape, Data: v}
	}
	return safetensors.Write(path, f)
}

// Read loads a score file written by Write.
func Read(path string) (Scores, Info, error) {
	f, err := safetensors.Read(path)
	if err != nil {
		return nil, Info{}, err
	}
	md := f.Metadata
	if md["format"] != "sptctl-sensitivity-1" {
		return nil, Info{}, fmt.Errorf("read %s: not an sptctl score file (metadata format %q)", path, md["format"])
	}
	info := Info{Fingerprint: md["fingerprint"]}
	num := func(key string) int64 {
		n, e := strconv.ParseInt(md[key], 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("read %s: metadata %s = %q is not a number", path, key, md[key])
		}
		return n
	}
	classes := num("classes")
	info.HeadSeed = num("head_seed")
	batches, batchSize, examples := num("batches"), num("batch_size"), num("examples")
	if err != nil {
		return nil, Info{}, err
	}
	if classes < 1 || classes > inject.MaxClasses {
		return nil, Info{}, fmt.Errorf("read %s: metadata classes = %d: want a class count from 1 to %d", path, classes, inject.MaxClasses)
	}
	if batches < 0 || batchSize < 0 || examples < 0 || batches > math.MaxInt32 || batchSize > math.MaxInt32 || examples > math.MaxInt32 {
		return nil, Info{}, fmt.Errorf("read %s: metadata batches, batch_size or examples out of range", path)
	}
	info.Classes, info.Batches, info.BatchSize, info.Examples = int(classes), int(batches), int(batchSize), int(examples)
	if err := readHead(path, f, &info); err != nil {
		return nil, Info{}, err
	}
	names := make([]string, 0, len(f.Tensors))
	for name := range f.Tensors {
		if name != headWeightTensor && name != headBiasTensor {
			names = append(names, name)
		}
	}
	sort.Strings(names) // the first bad tensor reported is the same every time
	s := Scores{}
	info.Shapes = map[string][]int64{}
	for _, name := range names {
		t := f.Tensors[name]
		for i, x := range t.Data {
			// A sensitivity is a sum of squared gradients: finite and never negative.
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) || x < 0 {
				return nil, Info{}, fmt.Errorf("read %s: tensor %q: score %d is %v; scores are sums of squares, finite and not negative", path, name, i, x)
			}
		}
		s[name] = t.Data
		info.Shapes[name] = t.Shape
	}
	return s, info, nil
}

// CheckModel reports whether scores were taken on model m.
func (info Info) CheckModel(path string, m *onnxpb.ModelProto) error {
	fp, err := onnxio.Fingerprint(m.GetGraph())
	if err != nil {
		return err
	}
	if fp != info.Fingerprint {
		return fmt.Errorf("the scores were computed on another model (fingerprint %.19s…, %s has %.19s…)", info.Fingerprint, path, fp)
	}
	inits := map[string]*onnxpb.TensorProto{}
	for _, t := range m.GetGraph().GetInitializer() {
		inits[t.GetName()] = t
	}
	names := make([]string, 0, len(info.Shapes))
	for name := range info.Shapes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		shape := info.Shapes[name]
		t := inits[name]
		switch {
		case t == nil:
			return fmt.Errorf("tensor %q: %s has no such initializer", name, path)
		case t.GetDataType() != onnxio.Float:
			return fmt.Errorf("tensor %q: initializer in %s is %s, scores are for FLOAT weights", name, path, onnxpb.TensorProto_DataType(t.GetDataType()))
		case !slices.Equal(shape, t.Dims):
			return fmt.Errorf("tensor %q: scores of shape %v, but the initializer in %s has shape %v", name, shape, path, t.Dims)
		}
	}
	return nil
}

// readHead reads the head the scores were taken with. Files written before the head
// was a choice have no head keys: a random head.
func readHead(path string, f *safetensors.File, info *Info) error {
	md := f.Metadata
	info.Head, info.HeadSeeds = cmp.Or(md["head"], inject.HeadRandom), 1
	switch info.Head {
	case inject.HeadRandom, inject.HeadProbe, inject.HeadZeroMean:
	default:
		return fmt.Errorf("read %s: metadata head = %q is not a head sptctl knows", path, info.Head)
	}
	if s := md["head_seeds"]; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > math.MaxInt32 {
			return fmt.Errorf("read %s: metadata head_seeds = %q: want a count of heads", path, s)
		}
		info.HeadSeeds = n
	}
	hw, okW := f.Tensors[headWeightTensor]
	hb, okB := f.Tensors[headBiasTensor]
	if !okW && !okB {
		return nil
	}
	if !okW || !okB || len(hb.Data) != info.Classes || len(hw.Data)%info.Classes != 0 {
		return fmt.Errorf("read %s: head values: want a weight [%d, in] and a bias [%d]", path, info.Classes, info.Classes)
	}
	info.HeadValues = &inject.HeadValues{Weight: hw.Data, Bias: hb.Data}
	var err error
	if info.HeadTop1, err = strconv.ParseFloat(md["head_top1"], 64); err != nil {
		return fmt.Errorf("read %s: metadata head_top1 = %q is not a number", path, md["head_top1"])
	}
	n, err := strconv.Atoi(md["head_examples"])
	if err != nil || n < 0 {
		return fmt.Errorf("read %s: metadata head_examples = %q is not a count", path, md["head_examples"])
	}
	info.HeadExamples = n
	return nil
}
