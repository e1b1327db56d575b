package safetensors

import (
	"encoding/binary"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.safetensors")
	in := &File{
		Tensors:  map[string]Tensor{"b": {Shape: []int64{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}}, "a.x": {Shape: []int64{1}, Data: []float32{-0.5}}},
		Metadata: map[string]string{"fingerprint": "sha256:00"},
	}
	if err := Write(p, in); err != nil {
		t.Fatal(err)
	}
	out, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if out.Metadata["fingerprint"] != "sha256:00" || len(out.Tensors) != 2 || out.Tensors["b"].Data[5] != 6 || out.Tensors["a.x"].Data[0] != -0.5 {
		t.Errorf("read back %+v", out)
	}
}

// TestReadableByNumPy checks the layout with an independent reader written from the
// format's description in Python (Debian's python3 with numpy).
func TestReadableByNumPy(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.safetensors")
	Write(p, &File{Tensors: map[string]Tensor{"w": {Shape: []int64{2, 2}, Data: []float32{1, 2, 3, 4.5}}}})
	script := `import json,struct,sys,numpy as np
b=open(sys.argv[1],'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); e=h['w']
a=np.frombuffer(b[8+n+e['data_offsets'][0]:8+n+e['data_offsets'][1]],dtype='<f4').reshape(e['shape'])
print(a.sum(), e['dtype'], n%8)`
	out, err := exec.Command("/usr/bin/python3", "-c", script, p).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "10.5 F32 0" {
		t.Errorf("python read %q", got)
	}
}

func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		"short":    {1, 2},
		"bigheadr": {255, 255, 0, 0, 0, 0, 0, 0, '{', '}'},
		"notjson":  append([]byte{4, 0, 0, 0, 0, 0, 0, 0}, "nope"...),
		"range":    append([]byte{50, 0, 0, 0, 0, 0, 0, 0}, `{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`[:50]...),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		if _, err := Read(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v should name the file", name, err)
		}
	}
}

// header builds a safetensors file from a JSON header and n data bytes.
func header(h string, n int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	return append(append(b, h...), make([]byte, n)...)
}

func TestDecodeRefusesBadSizes(t *testing.T) {
	for _, c := range []struct {
		name, header string
		data         int
		want         string
	}{
		{"overflowing shape", `{"w":{"dtype":"F32","shape":[4611686018427388000],"data_offsets":[0,384]}}`, 384, "int64"},
		{"element count wraps to zero", `{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, 0, "int64"},
		{"negative dim", `{"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}`, 16, "negative"},
		{"range past the data", `{"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}`, 16, "not within"},
		{"range reversed", `{"w":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}}`, 16, "not within"},
		{"negative offset", `{"w":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}}`, 16, "not within"},
		{"range too small for the shape", `{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}`, 16, "needs 16"},
		{"offsets overlap", `{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`, 16, `"a" and "b" overlap`},
		{"same range twice", `{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, 16, "overlap"},
		{"other dtype", `{"w":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}`, 16, "F32 only"},
	} {
		_, err := Decode(header(c.header, c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one saying %q", c.name, err, c.want)
		}
	}
	// A header length over the limit is refused before it is parsed.
	b := binary.LittleEndian.AppendUint64(nil, MaxHeader+8)
	b = append(b, make([]byte, MaxHeader+8)...)
	if _, err := Decode(b); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("header over the limit: %v", err)
	}
	// Adjacent ranges and empty tensors are fine.
	f, err := Decode(header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"e":{"dtype":"F32","shape":[0],"data_offsets":[16,16]}}`, 16))
	if err != nil || len(f.Tensors) != 3 {
		t.Errorf("adjacent ranges: %v", err)
	}
}

// FuzzDecode feeds arbitrary bytes to Decode: it must not panic or allocate more than
// the input justifies, and whatever it accepts must write and read back the same.
// testdata/fuzz/FuzzDecode holds a few small files as seeds.
func FuzzDecode(f *testing.F) {
	f.Add(header(`{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"format":"x"}}`, 16))
	f.Add(header(`{}`, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Decode(b)
		if err != nil {
			return
		}
		var n int
		for _, x := range got.Tensors {
			n += 4 * len(x.Data)
		}
		if n > len(b) {
			t.Fatalf("decoded %d data bytes from a %d-byte input", n, len(b))
		}
		p := filepath.Join(t.TempDir(), "s.safetensors")
		if err := Write(p, got); err != nil {
			t.Fatalf("decoded file does not write: %v", err)
		}
		again, err := Read(p)
		if err != nil {
			t.Fatalf("written file does not read: %v", err)
		}
		if len(again.Tensors) != len(got.Tensors) {
			t.Fatalf("%d tensors read back, want %d", len(again.Tensors), len(got.Tensors))
		}
		for name, x := range got.Tensors {
			y := again.Tensors[name]
			if !slices.Equal(x.Shape, y.Shape) || len(x.Data) != len(y.Data) {
				t.Fatalf("tensor %q read back as %v, want %v", name, y.Shape, x.Shape)
			}
			for i := range x.Data {
				if math.Float32bits(x.Data[i]) != math.Float32bits(y.Data[i]) {
					t.Fatalf("tensor %q value %d changed", name, i)
				}
			}
		}
	})
}
