package adapter

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/sptctl/sptctl/export/adapter/internal/fb"
	"github.com/sptctl/sptctl/onnxio"
)

func sample() map[string]Tensor {
	return map[string]Tensor{
		"spt/blocks.0.fc1/lora_A":         FloatTensor([]int64{2, 3}, []float32{1, 2, 3, 4, 5, 6}),
		"spt/blocks.0.q/sparse_indices":   Int64Tensor([]int64{2, 2}, []int64{0, 1, 5, 7}),
		"spt/blocks.0.q/sparse_values":    FloatTensor([]int64{3}, []float32{-1, 0.5, 7}),
		"scalar":                          FloatTensor(nil, []float32{42}),
		"empty":                           FloatTensor([]int64{0, 4}, nil),
		"spt/blocks.1.norm1.scale/sparse": FloatTensor([]int64{1}, []float32{3}),
	}
}

func TestRoundTrip(t *testing.T) {
	in := sample()
	b, err := Encode(in, WriteOptions{AdapterVersion: 3, ModelVersion: 5})
	if err != nil {
		t.Fatal(err)
	}
	if string(b[4:8]) != FileIdentifier {
		t.Fatalf("identifier %q", b[4:8])
	}
	f, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if f.FormatVersion != 1 || f.AdapterVersion != 3 || f.ModelVersion != 5 {
		t.Errorf("versions %d %d %d", f.FormatVersion, f.AdapterVersion, f.ModelVersion)
	}
	if !slices.IsSorted(f.Names) || len(f.Names) != len(in) {
		t.Errorf("names %v", f.Names)
	}
	for name, want := range in {
		got := f.Tensors[name]
		if !slices.Equal(got.Dims, want.Dims) || got.DataType != want.DataType || string(got.Raw) != string(want.Raw) {
			t.Errorf("%s: got %+v, want %+v", name, got, want)
		}
	}
	// The generated reader agrees, and every data vector starts 8-byte aligned.
	a := fb.GetRootAsAdapter(b, 0)
	var p fb.Parameter
	for i := 0; i < a.ParametersLength(); i++ {
		a.Parameters(&p, i)
		if n := p.RawDataLength(); n > 0 {
			tab := p.Table()
			pos := int(tab.Vector(flatbuffers.UOffsetT(tab.Offset(10))))
			if pos%8 != 0 {
				t.Errorf("%s: data at %d, not 8-aligned", p.Name(), pos)
			}
		}
	}
	// Deterministic.
	b2, _ := Encode(in, WriteOptions{AdapterVersion: 3, ModelVersion: 5})
	if string(b) != string(b2) {
		t.Error("Encode is not deterministic")
	}
	p2 := filepath.Join(t.TempDir(), "x"+Ext)
	if err := Write(p2, in); err != nil {
		t.Fatal(err)
	}
	back, err := Read(p2)
	if err != nil || len(back) != len(in) {
		t.Fatalf("Read: %v, %d tensors", err, len(back))
	}
}

func TestEncodeRefuses(t *testing.T) {
	for name, ts := range map[string]map[string]Tensor{
		"short data": {"x": {Dims: []int64{3}, DataType: onnxio.Float, Raw: make([]byte, 8)}},
		"no name":    {"": FloatTensor([]int64{1}, []float32{1})},
		"string":     {"x": {Dims: []int64{1}, DataType: 8, Raw: []byte{1}}},
		"negative":   {"x": {Dims: []int64{-1}, DataType: onnxio.Float}},
	} {
		if _, err := Encode(ts, WriteOptions{}); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

// Truncated, corrupted or foreign files get an error, never a panic.
func TestDecodeMalformed(t *testing.T) {
	good, err := Encode(sample(), WriteOptions{AdapterVersion: 1, ModelVersion: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Cutting anything but the final alignment padding is an error.
	for n := 0; n < len(good); n++ {
		f, err := Decode(good[:n])
		if err == nil && (len(good)-n > 7 || len(f.Tensors) != len(sample())) {
			t.Fatalf("truncated to %d of %d bytes: no error", n, len(good))
		}
	}
	_, err = Decode(good[:len(good)/2])
	t.Logf("truncated: %v", err)
	wrongID := slices.Clone(good)
	copy(wrongID[4:8], "ORTX")
	if _, err := Decode(wrongID); err == nil || !strings.Contains(err.Error(), `file identifier "ORTX", want "TORT"`) {
		t.Errorf("wrong identifier: %v", err)
	}
	onnx, _ := os.ReadFile("../../testdata/tv_op17_dynamic.onnx")
	if _, err := Decode(onnx); err == nil || !strings.Contains(err.Error(), "not an ONNX Runtime adapter") {
		t.Errorf("an ONNX model: %v", err)
	}
	// Format version 2.
	f := fb.GetRootAsAdapter(good, 0)
	v2 := slices.Clone(good)
	if !fb.GetRootAsAdapter(v2, 0).MutateFormatVersion(2) || f.FormatVersion() != 1 {
		t.Fatal("cannot mutate the format version")
	}
	if _, err := Decode(v2); err == nil || !strings.Contains(err.Error(), "format version 2") {
		t.Errorf("format version 2: %v", err)
	}
	// Random corruption: errors or (rarely) a valid file, never a panic.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 3000; i++ {
		b := slices.Clone(good)
		for k := 0; k < 1+rng.IntN(4); k++ {
			b[rng.IntN(len(b))] = byte(rng.IntN(256))
		}
		if rng.IntN(4) == 0 {
			pos := 8 + 4*rng.IntN((len(b)-8)/4)
			binary.LittleEndian.PutUint32(b[pos:], rng.Uint32())
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("corruption %d: panic %v", i, r)
				}
			}()
			Decode(b)
		}()
	}
}

func FuzzDecode(f *testing.F) {
	good, _ := Encode(sample(), WriteOptions{})
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		if fl, err := Decode(b); err == nil {
			for _, tn := range fl.Tensors {
				if err := tn.checkSize(); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}
