package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// The good inputs the bad ones are made from, and the writers of bad files.

// fixtures are the good inputs the bad ones are made from, under in.
type fixtures struct {
	in, out string
}

func (f *fixtures) p(name string) string { return filepath.Join(f.in, name) }

// sptctl runs a setup step that must succeed.
func (f *fixtures) run(args ...string) {
	cmd := exec.Command(*sptctl, args...)
	cmd.Dir = f.out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		log.Fatalf("setup: sptctl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
}

func (f *fixtures) write(name string, b []byte) string {
	p := f.p(name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		log.Fatal(err)
	}
	return p
}

func (f *fixtures) copy(from, name string) string {
	b, err := os.ReadFile(from)
	if err != nil {
		log.Fatal(err)
	}
	return f.write(name, b)
}

func (f *fixtures) build() {
	testdata := func(n string) string { return filepath.Join(*repo, "testdata", n) }
	f.copy(testdata("tv_op17_dynamic.onnx"), "base.onnx")
	f.copy(testdata("timm_op17.onnx"), "other.onnx")
	f.copy(testdata("tv_op17_dynamic.input.npy"), "x.npy")
	f.run("data", "fewshot", "--from", *idx, "--classes", "0-4", "--train", "16", "--val", "8", "--test", "8", "--seed", "1", "--out", f.p("task"))
	f.run("sensitivity", "--model", f.p("base.onnx"), "--data", f.p("task"), "--batches", "2", "--batch-size", "8", "--out", f.p("scores.safetensors"))
	f.run("allocate", "--model", f.p("base.onnx"), "--scores", f.p("scores.safetensors"), "--budget", "10%", "--out", f.p("plan.json"))
	f.run("inject", "--model", f.p("base.onnx"), "--plan", f.p("plan.json"), "--out", f.p("tunable.onnx"))
	f.run("train", "--model", f.p("tunable.onnx"), "--data", f.p("task"), "--val-split", "", "--epochs", "1", "--batch-size", "8", "--out", f.p("trained.onnx"))
	f.run("export", "--model", f.p("trained.onnx"), "--sidecar", f.p("sidecar"), "--task", "t")
	f.run("allocate", "--model", f.p("other.onnx"), "--strategy", "linear", "--out", f.p("other-plan.json"))
}

// model loads a fixture model for mutation.
func (f *fixtures) model(name string) *onnxpb.ModelProto {
	m, err := onnxio.Load(f.p(name))
	if err != nil {
		log.Fatal(err)
	}
	return m
}

// saveRaw writes m as it is (no checks), returning its path.
func (f *fixtures) saveRaw(name string, m *onnxpb.ModelProto) string {
	b, err := proto.Marshal(m)
	if err != nil {
		log.Fatal(err)
	}
	return f.write(name, b)
}

func pseudoRandom(n int) []byte {
	b := make([]byte, n)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

// task writes a copy of the task with its train list replaced by lines.
func (f *fixtures) badTask(name, trainList string, extra map[string][]byte) string {
	dir := f.p("badtask/" + name)
	src := f.p("task")
	filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		b, _ := os.ReadFile(p)
		f.write(filepath.Join("badtask", name, rel), b)
		return nil
	})
	f.write(filepath.Join("badtask", name, "train16.txt"), []byte(trainList))
	for rel, b := range extra {
		f.write(filepath.Join("badtask", name, rel), b)
	}
	return dir
}

// hugePNG is a PNG header declaring w × h pixels, with one tiny compressed row.
func hugePNG(w, h uint32) []byte {
	var b bytes.Buffer
	b.Write([]byte("\x89PNG\r\n\x1a\n"))
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(append([]byte(typ), data...)))
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2 // 8-bit RGB
	chunk("IHDR", ihdr)
	chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})
	chunk("IEND", nil)
	return b.Bytes()
}

// scoreFile rewrites the good score file with edit applied to its header and data.
func (f *fixtures) scoreFile(name string, edit func(h map[string]any, data []byte) []byte) string {
	b, err := os.ReadFile(f.p("scores.safetensors"))
	if err != nil {
		log.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b[:8])
	var h map[string]any
	if err := json.Unmarshal(b[8:8+n], &h); err != nil {
		log.Fatal(err)
	}
	data := edit(h, append([]byte(nil), b[8+n:]...))
	hb, _ := json.Marshal(h)
	var out bytes.Buffer
	binary.Write(&out, binary.LittleEndian, uint64(len(hb)))
	out.Write(hb)
	out.Write(data)
	return f.write("badscores/"+name+".safetensors", out.Bytes())
}

// firstTensor is the name of a tensor of a score header with 2-D shape, and its entry.
func firstTensor(h map[string]any) (string, map[string]any) {
	names := make([]string, 0, len(h))
	for k := range h {
		if k != "__metadata__" {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		e := h[k].(map[string]any)
		if len(e["shape"].([]any)) == 2 {
			return k, e
		}
	}
	return names[0], h[names[0]].(map[string]any)
}

func offsets(e map[string]any) (int, int) {
	o := e["data_offsets"].([]any)
	return int(o[0].(float64)), int(o[1].(float64))
}

func putFloat(data []byte, at int, v float32) {
	binary.LittleEndian.PutUint32(data[at:], math.Float32bits(v))
}

// plan rewrites the good plan with edit applied to its JSON.
func (f *fixtures) plan(name string, edit func(p map[string]any)) string {
	b, err := os.ReadFile(f.p("plan.json"))
	if err != nil {
		log.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(b, &p); err != nil {
		log.Fatal(err)
	}
	edit(p)
	out, _ := json.MarshalIndent(p, "", "  ")
	return f.write("badplans/"+name+".json", out)
}

// firstLayer is the plan's first layer entry (a structured or sparse one).
func firstLayer(p map[string]any) map[string]any {
	return p["layers"].([]any)[0].(map[string]any)
}

func npyHeader(descr string, shape string, data []byte) []byte {
	h := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, shape)
	for (10+len(h)+1)%64 != 0 {
		h += " "
	}
	h += "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(h)))
	b.WriteString(h)
	b.Write(data)
	return b.Bytes()
}

// setRank sets the rank of the plan's first structured layer (or the first layer).
func setRank(p map[string]any, r float64) {
	for _, l := range p["layers"].([]any) {
		m := l.(map[string]any)
		if rk, ok := m["rank"].(float64); ok && rk > 0 {
			m["rank"] = r
			return
		}
	}
	firstLayer(p)["rank"] = r
}

// userTask is an earlier fewshot output into which the user put a file.
func (f *fixtures) userTask() string {
	dir := f.p("usertask")
	f.run("data", "fewshot", "--from", *idx, "--classes", "0-4", "--train", "16", "--val", "8", "--test", "8", "--out", dir)
	f.write("usertask/my-notes.txt", []byte("the user's own file\n"))
	return dir
}
