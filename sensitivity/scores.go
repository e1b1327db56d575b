package sensitivity

import (
	"fmt"
	"strconv"

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
}

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
	}}
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
	info.Classes, info.HeadSeed = int(num("classes")), num("head_seed")
	info.Batches, info.BatchSize, info.Examples = int(num("batches")), int(num("batch_size")), int(num("examples"))
	if err != nil {
		return nil, Info{}, err
	}
	s := Scores{}
	for name, t := range f.Tensors {
		s[name] = t.Data
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
	return nil
}
