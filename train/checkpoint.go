package train

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/internal/safetensors"
)

// fingerprint summarises the settings a checkpoint is only valid for.
func (c Config) fingerprint(perEpoch int) string {
	return fmt.Sprintf("epochs=%d batch=%d lr=%g minlr=%g wd=%g warmup=%d seed=%d batches/epoch=%d",
		c.Epochs, c.BatchSize, c.LR, c.MinLR, c.WeightDecay, c.WarmupEpochs, c.Seed, perEpoch)
}

type checkpoint struct {
	params, m, v map[string][]float32
	step         int
	epoch, batch int
	settings     string
	base         string // fingerprint of the base model (Config.Base; "" in older files)
}

func writeCheckpoint(path string, e engine.Engine, p engine.Program, opt *AdamW, names []string, shapes map[string][]int64, epoch, batch int, settings, base string) error {
	f := &safetensors.File{Tensors: map[string]safetensors.Tensor{}, Metadata: map[string]string{
		"format": "sptctl-checkpoint-1", "step": strconv.Itoa(opt.Step), "epoch": strconv.Itoa(epoch),
		"batch": strconv.Itoa(batch), "settings": settings,
	}}
	if base != "" {
		f.Metadata["base_fingerprint"] = base
	}
	err := e.Do(func() error {
		for _, n := range names {
			v, err := p.Floats(n)
			if err != nil {
				return err
			}
			if i := finite32(v); i >= 0 {
				return fmt.Errorf("parameter %q entry %d is %v; not saved", n, i, v[i])
			}
			f.Tensors["param/"+n] = safetensors.Tensor{Shape: shapes[n], Data: v}
			if m := opt.M[n]; m != nil {
				f.Tensors["adam_m/"+n] = safetensors.Tensor{Shape: shapes[n], Data: m}
				f.Tensors["adam_v/"+n] = safetensors.Tensor{Shape: shapes[n], Data: opt.V[n]}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return safetensors.Write(path, f)
}

func readCheckpoint(path string, names []string, shapes map[string][]int64) (*checkpoint, error) {
	if path == "" {
		return nil, errors.New("resume: no checkpoint file given")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	f, err := safetensors.Read(path)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	md := f.Metadata
	if md["format"] != "sptctl-checkpoint-1" {
		return nil, fmt.Errorf("resume: %s is not an sptctl checkpoint", path)
	}
	ck := &checkpoint{params: map[string][]float32{}, m: map[string][]float32{}, v: map[string][]float32{}, settings: md["settings"], base: md["base_fingerprint"]}
	for key, dst := range map[string]*int{"step": &ck.step, "epoch": &ck.epoch, "batch": &ck.batch} {
		if *dst, err = strconv.Atoi(md[key]); err != nil {
			return nil, fmt.Errorf("resume: %s: bad %s %q", path, key, md[key])
		}
	}
	for _, n := range names {
		t, ok := f.Tensors["param/"+n]
		if !ok || !slices.Equal(t.Shape, shapes[n]) || len(t.Data) != numel(shapes[n]) {
			return nil, fmt.Errorf("resume: %s has no (or a wrongly sized) tensor for %q; was it made for this model?", path, n)
		}
		if i := finite32(t.Data); i >= 0 {
			return nil, fmt.Errorf("resume: %s: parameter %q entry %d is %v", path, n, i, t.Data[i])
		}
		ck.params[n] = t.Data
		if m, ok := f.Tensors["adam_m/"+n]; ok {
			ck.m[n], ck.v[n] = m.Data, f.Tensors["adam_v/"+n].Data
		}
	}
	return ck, nil
}

func numel(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}
