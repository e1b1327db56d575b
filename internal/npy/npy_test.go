package npy

import (
	"bytes"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const debianPython = "/usr/bin/python3"

// numpy runs a script with Debian's python3 (which has numpy) in dir.
func numpy(t *testing.T, dir, script string) string {
	t.Helper()
	if _, err := os.Stat(debianPython); err != nil {
		t.Fatalf("%s is needed for this test (Debian python3-numpy): %v", debianPython, err)
	}
	cmd := exec.Command(debianPython, "-c", "import numpy as np\n"+script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return string(out)
}

func TestReadNumpyFiles(t *testing.T) {
	dir := t.TempDir()
	numpy(t, dir, `
a = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5) / 3
a[0, 0, 0] = np.inf; a[0, 0, 1] = -0.0; a[1, 2, 3] = np.finfo(np.float32).tiny
np.save("f4.npy", a)
np.save("i8.npy", np.array([[-(2**62), -1, 0], [1, 2**40, 2**63 - 1]], dtype=np.int64))
np.save("scalar.npy", np.float32(2.5))
np.save("empty.npy", np.zeros((0, 3), np.float32))
np.save("vec.npy", np.arange(5, dtype=np.int64))
np.lib.format.write_array(open("v2.npy", "wb"), np.ones((2, 2), np.float32), version=(2, 0))
np.save("fortran.npy", np.asfortranarray(np.ones((2, 3), np.float32)))
np.save("big.npy", np.ones((2, 3), ">f4"))
np.save("f8.npy", np.ones((2, 3), np.float64))
np.save("i4.npy", np.ones((2,), np.int32))
`)
	f4, err := Read(filepath.Join(dir, "f4.npy"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f4.Shape, []int64{2, 3, 4}) || len(f4.Float32) != 24 || f4.Int64 != nil {
		t.Fatalf("f4: shape %v, %d floats, int64 %v", f4.Shape, len(f4.Float32), f4.Int64)
	}
	if !math.IsInf(float64(f4.Float32[0]), 1) || !math.Signbit(float64(f4.Float32[1])) ||
		f4.Float32[23] != math.Float32frombits(0x00800000) {
		t.Fatalf("f4 special values: %v", f4.Float32[:2])
	}
	for i := 2; i < 23; i++ {
		if want := (float32(i) - 7.5) / 3; f4.Float32[i] != want {
			t.Fatalf("f4[%d] = %v, want %v", i, f4.Float32[i], want)
		}
	}
	i8, err := Read(filepath.Join(dir, "i8.npy"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{-(1 << 62), -1, 0, 1, 1 << 40, math.MaxInt64}; !reflect.DeepEqual(i8.Int64, want) ||
		!reflect.DeepEqual(i8.Shape, []int64{2, 3}) || i8.Float32 != nil {
		t.Fatalf("i8: %v %v", i8.Shape, i8.Int64)
	}
	sc, err := Read(filepath.Join(dir, "scalar.npy"))
	if err != nil || len(sc.Shape) != 0 || !reflect.DeepEqual(sc.Float32, []float32{2.5}) {
		t.Fatalf("scalar: %+v %v", sc, err)
	}
	em, err := Read(filepath.Join(dir, "empty.npy"))
	if err != nil || !reflect.DeepEqual(em.Shape, []int64{0, 3}) || len(em.Float32) != 0 {
		t.Fatalf("empty: %+v %v", em, err)
	}
	vec, err := Read(filepath.Join(dir, "vec.npy"))
	if err != nil || !reflect.DeepEqual(vec.Shape, []int64{5}) || !reflect.DeepEqual(vec.Int64, []int64{0, 1, 2, 3, 4}) {
		t.Fatalf("vec: %+v %v", vec, err)
	}
	v2, err := Read(filepath.Join(dir, "v2.npy"))
	if err != nil || !reflect.DeepEqual(v2.Float32, []float32{1, 1, 1, 1}) {
		t.Fatalf("v2: %+v %v", v2, err)
	}
	for name, want := range map[string]string{
		"fortran.npy": "Fortran order",
		"big.npy":     `">f4"`,
		"f8.npy":      `"<f8"`,
		"i4.npy":      `"<i4"`,
	} {
		p := filepath.Join(dir, name)
		_, err := Read(p)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one naming the file and %s", name, err, want)
		}
	}
}

func TestReadFixtures(t *testing.T) {
	paths, _ := filepath.Glob("../../testdata/*.npy")
	if len(paths) == 0 {
		t.Fatal("no fixtures in testdata/")
	}
	for _, p := range paths {
		a, err := Read(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Float32) == 0 || len(a.Shape) < 2 {
			t.Errorf("%s: shape %v, %d floats", p, a.Shape, len(a.Float32))
		}
		// Writing it back gives the same bytes as NumPy's file.
		var buf bytes.Buffer
		if err := Encode(&buf, a); err != nil {
			t.Fatal(err)
		}
		orig, _ := os.ReadFile(p)
		if !bytes.Equal(buf.Bytes(), orig) {
			t.Errorf("%s: re-encoding differs from NumPy's bytes", p)
		}
	}
}

func TestRoundTripAndNumpyReadsOurs(t *testing.T) {
	dir := t.TempDir()
	arrays := map[string]*Array{
		"f.npy":      {Shape: []int64{2, 3}, Float32: []float32{1, -2, 3.25, float32(math.NaN()), 5, 6e-30}},
		"i.npy":      {Shape: []int64{3}, Int64: []int64{-1, 0, math.MaxInt64}},
		"scalar.npy": {Shape: []int64{}, Int64: []int64{7}},
		"empty.npy":  {Shape: []int64{0, 4}, Float32: []float32{}},
	}
	for name, a := range arrays {
		p := filepath.Join(dir, name)
		if err := Write(p, a); err != nil {
			t.Fatal(err)
		}
		b, err := Read(p)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a.Shape, b.Shape) || len(a.Float32) != len(b.Float32) || !reflect.DeepEqual(a.Int64, b.Int64) {
			t.Fatalf("%s: round trip %+v -> %+v", name, a, b)
		}
		for i := range a.Float32 {
			if math.Float32bits(a.Float32[i]) != math.Float32bits(b.Float32[i]) {
				t.Fatalf("%s[%d]: %v -> %v", name, i, a.Float32[i], b.Float32[i])
			}
		}
	}
	out := numpy(t, dir, `
for n in ["f", "i", "scalar", "empty"]:
    a = np.load(n + ".npy")
    print(n, a.dtype.str, a.shape, a.flags.c_contiguous, a.tolist())
`)
	for _, line := range []string{
		"f <f4 (2, 3) True [[1.0, -2.0, 3.25], [nan, 5.0, 6.0000000",
		"i <i8 (3,) True [-1, 0, 9223372036854775807]",
		"scalar <i8 () True 7",
		"empty <f4 (0, 4) True []",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("numpy output lacks %q:\n%s", line, out)
		}
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.npy")
	for _, a := range []*Array{
		nil,
		{Shape: []int64{2, 2}, Float32: []float32{1, 2, 3}},
		{Shape: []int64{-1}, Float32: []float32{}},
		{Shape: []int64{1}, Float32: []float32{1}, Int64: []int64{1}},
	} {
		if err := Write(p, a); err == nil {
			t.Errorf("Write(%+v) succeeded", a)
		}
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("failed writes left %s behind", p)
	}
}

func TestReadCorrupt(t *testing.T) {
	dir := t.TempDir()
	good := &Array{Shape: []int64{4, 4}, Float32: make([]float32, 16)}
	var buf bytes.Buffer
	if err := Encode(&buf, good); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	cases := map[string][]byte{
		"truncated": b[:len(b)-3],
		"trailing":  append(append([]byte{}, b...), 0),
		"magic":     append([]byte("XNUMPY"), b[6:]...),
		"short":     b[:5],
		"header":    bytes.Replace(b, []byte("'shape': (4, 4)"), []byte("'shape': [4, 4]"), 1),
		"version":   append(append([]byte{}, b[:6]...), append([]byte{9, 0}, b[8:]...)...),
	}
	for name, data := range cases {
		p := filepath.Join(dir, name+".npy")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v", name, err)
		}
	}
	if _, err := Decode(bytes.NewReader(b[:len(b)-3])); err == nil {
		t.Error("Decode of truncated stream succeeded")
	}
	if a, err := Decode(bytes.NewReader(b)); err != nil || len(a.Float32) != 16 {
		t.Errorf("Decode: %v", err)
	}
}

// rawNpy is a version 1.0 .npy file with the given header dict and n data bytes.
func rawNpy(dict string, n int) []byte {
	h := dict + strings.Repeat(" ", (64-(10+len(dict)+1)%64)%64) + "\n"
	b := append([]byte("\x93NUMPY\x01\x00"), byte(len(h)), byte(len(h)>>8))
	return append(append(b, h...), make([]byte, n)...)
}

// Sizes in a header are checked before anything is allocated: overflowing shapes and
// shapes larger than the file are refused, from a file and from a stream.
func TestReadHugeShapes(t *testing.T) {
	dir := t.TempDir()
	for name, dict := range map[string]string{
		"overflow":    "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427388000,), }",
		"wraps to 0":  "{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
		"over limit":  "{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576), }",
		"beyond file": "{'descr': '<f4', 'fortran_order': False, 'shape': (1024, 1024), }",
	} {
		b := rawNpy(dict, 16)
		p := filepath.Join(dir, "a.npy")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: Read error %v should name the file", name, err)
		}
		if _, err := Decode(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: Decode accepted it", name)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to Decode: it must not panic, and an array it
// accepts must encode and decode back the same. testdata/fuzz/FuzzDecode holds seeds.
func FuzzDecode(f *testing.F) {
	var buf bytes.Buffer
	Encode(&buf, &Array{Shape: []int64{2, 3}, Float32: []float32{1, 2, 3, 4, 5, 6}})
	f.Add(buf.Bytes())
	f.Add(rawNpy("{'descr': '<i8', 'fortran_order': False, 'shape': (), }", 8))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := Decode(bytes.NewReader(b))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := Encode(&out, a); err != nil {
			t.Fatalf("decoded array does not encode: %v", err)
		}
		back, err := Decode(&out)
		if err != nil {
			t.Fatalf("encoded array does not decode: %v", err)
		}
		if !reflect.DeepEqual(a.Shape, back.Shape) || len(a.Float32) != len(back.Float32) || len(a.Int64) != len(back.Int64) || a.Dtype() != back.Dtype() {
			t.Fatalf("round trip changed %v %s to %v %s", a.Shape, a.Dtype(), back.Shape, back.Dtype())
		}
		for i := range a.Float32 {
			if math.Float32bits(a.Float32[i]) != math.Float32bits(back.Float32[i]) {
				t.Fatalf("value %d changed", i)
			}
		}
		if !reflect.DeepEqual(a.Int64, back.Int64) {
			t.Fatal("int64 values changed")
		}
	})
}
