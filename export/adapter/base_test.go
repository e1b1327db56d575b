package adapter_test

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/export/adapter"
	"github.com/sptctl/sptctl/export/adapter/adaptertest"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// An adapter records the base model it was made for; one trained on another base of
// the same shapes, which Check alone accepts, is refused.
func TestAdapterRecordsItsBase(t *testing.T) {
	base := loadBase(t)
	other := proto.Clone(base).(*onnxpb.ModelProto) // same shapes, other weights
	for _, init := range other.Graph.Initializer {
		if init.GetDataType() == onnxio.Float && onnxio.NumElements(init.Dims) > 1 {
			v, _ := onnxio.Floats(init)
			v[0] += 0.5
			onnxio.SetFloats(init, v)
			break
		}
	}
	spec := adaptertest.Specs()[0]
	ready := func(b *onnxpb.ModelProto) (*onnxpb.ModelProto, map[string]adapter.Tensor, string) {
		task := adaptertest.Make(t, b, spec)
		r, err := adapter.BuildReady(b, []*onnxpb.ModelProto{task.Model})
		if err != nil {
			t.Fatal(err)
		}
		ts, err := adapter.ForTask(r, task.Model)
		if err != nil {
			t.Fatal(err)
		}
		info, err := adapter.Info(r)
		if err != nil {
			t.Fatal(err)
		}
		return r, ts, info.BaseFingerprint
	}
	readyA, tsA, fpA := ready(base)
	_, tsB, fpB := ready(other)
	if fpA == fpB || adapter.BaseTag(fpA) == adapter.BaseTag(fpB) {
		t.Fatalf("bases not told apart: %s %s", fpA, fpB)
	}
	dir := t.TempDir()
	read := func(name string, ts map[string]adapter.Tensor, fp string) *adapter.File {
		p := filepath.Join(dir, name)
		var err error
		if fp == "" {
			err = adapter.Write(p, ts)
		} else {
			err = adapter.WriteFor(p, ts, fp)
		}
		if err != nil {
			t.Fatal(err)
		}
		f, err := adapter.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	own := read("a.onnx_adapter", tsA, fpA)
	if err := adapter.CheckBase(own, readyA); err != nil {
		t.Errorf("adapter on its own base: %v", err)
	}
	foreign := read("b.onnx_adapter", tsB, fpB)
	if err := adapter.Check(readyA, foreign.Tensors); err != nil {
		t.Fatalf("the other base's adapter should fit by shape (that is the case to catch): %v", err)
	}
	if err := adapter.CheckBase(foreign, readyA); err == nil || !strings.Contains(err.Error(), "another base model") {
		t.Errorf("adapter of another base: %v", err)
	}
	// Files that record no base (older sptctl: model version 1) stay readable.
	if err := adapter.CheckBase(read("old.onnx_adapter", tsB, ""), readyA); err != nil {
		t.Errorf("adapter without a base record: %v", err)
	}
	for _, fp := range []string{"", "sha256:0", fpA} {
		if tag := adapter.BaseTag(fp); tag < 3 || tag%2 == 0 {
			t.Errorf("BaseTag(%q) = %d", fp, tag)
		}
	}
}
