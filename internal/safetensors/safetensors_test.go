package safetensors

import (
	"os"
	"os/exec"
	"path/filepath"
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
