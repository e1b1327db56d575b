// Command robustness feeds sptctl bad inputs of every kind and checks how it refuses
// them: each case must exit 1 (bad input) or 2 (bad usage) with one line of sptctl's
// on stderr, no panic or stack trace, within its time limit, and no input file may
// change (sha256 of every file under the inputs folder, before and after each case).
// It writes the table of cases as markdown and exits 1 if any case breaks a rule.
//
//	bench/robustness.sh          # builds sptctl, runs this, writes bench/RESULTS-robustness.md
//	go run ./bench/robustness -sptctl bin/sptctl -out bench/RESULTS-robustness.md
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"hash/crc32"
	"image/png"
	"io/fs"
	"log"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// A case is one command run on bad input.
type testCase struct {
	input string   // what is wrong, in words
	args  []string // sptctl's arguments
}

type result struct {
	testCase
	code    int
	message string
	seconds float64
	problem string // the rule it breaks, "" if none
}

var (
	sptctl  = flag.String("sptctl", "bin/sptctl", "the sptctl binary")
	outFile = flag.String("out", "bench/RESULTS-robustness.md", "markdown table to write")
	work    = flag.String("work", "", "work folder (default: a temporary one, removed after)")
	limit   = flag.Duration("timeout", 120*time.Second, "time limit of one case")
	memory  = flag.Int64("memory", 8<<30, "address-space limit of one case, bytes (prlimit --as)")
	idx     = flag.String("idx", "/usr/share/datasets/fashion-mnist", "IDX data set the task is carved from")
	repo    = flag.String("repo", ".", "the sptctl checkout (for testdata/)")
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("robustness: ")
	flag.Parse()
	var err error
	if *sptctl, err = filepath.Abs(*sptctl); err != nil {
		log.Fatal(err)
	}
	dir := *work
	if dir == "" {
		if dir, err = os.MkdirTemp("", "sptctl-robustness-"); err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	for _, d := range []string{in, out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			log.Fatal(err)
		}
	}
	f := &fixtures{in: in, out: out}
	f.build()
	cases := f.cases()
	var results []result
	bad := 0
	for i, c := range cases {
		r := runCase(in, filepath.Join(out, strconv.Itoa(i)), c)
		if r.problem != "" {
			bad++
			log.Printf("case %d (%s, %s): %s", i+1, c.input, strings.Join(c.args[:min(2, len(c.args))], " "), r.problem)
		}
		results = append(results, r)
	}
	if err := writeTable(*outFile, results, bad); err != nil {
		log.Fatal(err)
	}
	log.Printf("%d cases, %d break a rule; wrote %s", len(results), bad, *outFile)
	if bad > 0 {
		os.Exit(1)
	}
}

// runCase runs one case in its own output folder (its working directory) and checks it.
func runCase(in, caseDir string, c testCase) result {
	os.MkdirAll(caseDir, 0o755)
	before := treeSums(in)
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	args := append([]string{fmt.Sprintf("--as=%d", *memory), "--", *sptctl}, c.args...)
	cmd := exec.CommandContext(ctx, "prlimit", args...)
	cmd.Dir = caseDir
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = nil, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{testCase: c, seconds: time.Since(start).Seconds()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		r.code = -1
		r.problem = err.Error()
	}
	text := strings.TrimSpace(stderr.String())
	lines := strings.Split(text, "\n")
	var errLines []string
	for _, l := range lines {
		if strings.HasPrefix(l, "sptctl: ") {
			errLines = append(errLines, l)
		}
	}
	last := lines[len(lines)-1]
	r.message = last
	switch {
	case r.problem != "":
	case ctx.Err() != nil:
		r.problem = fmt.Sprintf("did not finish within %v", *limit)
	case r.code != 1 && r.code != 2:
		r.problem = fmt.Sprintf("exit %d, want 1 or 2", r.code)
	case strings.Contains(text, "goroutine ") || strings.Contains(text, "panic:") || strings.Contains(text, "SIGSEGV") ||
		strings.Contains(text, "terminate called") || strings.Contains(text, "fatal error:"):
		r.problem = "a crash or stack trace on stderr"
	case len(errLines) != 1 || !strings.HasPrefix(last, "sptctl: "):
		r.problem = fmt.Sprintf("want one error line of sptctl's, last on stderr; got %d: %q", len(errLines), text)
	}
	if after := treeSums(in); r.problem == "" {
		if changed := diffSums(before, after); changed != "" {
			r.problem = "input changed: " + changed
		}
	}
	return r
}

// treeSums is the sha256 of every file under dir (symbolic links by their target text).
func treeSums(dir string) map[string]string {
	sums := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		var b []byte
		if d.Type()&fs.ModeSymlink != 0 {
			t, _ := os.Readlink(p)
			b = []byte("link:" + t)
		} else if b, err = os.ReadFile(p); err != nil {
			return nil
		}
		sums[p] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	return sums
}

func diffSums(a, b map[string]string) string {
	var changed []string
	for p, s := range a {
		if b[p] != s {
			changed = append(changed, p)
		}
	}
	sort.Strings(changed)
	return strings.Join(changed, ", ")
}

func writeTable(path string, rs []result, bad int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Robustness: %d bad inputs\n\n", len(rs))
	fmt.Fprintf(&b, "Made by `bench/robustness.sh` (builds sptctl, then `go run ./bench/robustness`), which\n"+
		"creates every input below in a temporary folder, runs each command with a %v time limit and a\n"+
		"%d GiB address-space limit, and checks that it exits 1 (bad input) or 2 (bad usage) with one\n"+
		"line of sptctl's on stderr (the last; progress lines may come before it), no panic or stack\n"+
		"trace, and that no file under the inputs folder changed (sha256 of each, before and after).\n"+
		"The script fails if any row breaks a rule. Paths: `in/` is the inputs folder, each case runs in\n"+
		"its own empty folder. Fixtures: `base.onnx` = testdata/tv_op17_dynamic.onnx (10 classes),\n"+
		"`other.onnx` = testdata/timm_op17.onnx, `task` = a 5-class Fashion-MNIST few-shot task, and\n"+
		"`scores.safetensors`, `plan.json`, `tunable.onnx`, `trained.onnx`, `sidecar/` made from them by sptctl.\n\n",
		*limit, *memory>>30)
	fmt.Fprintf(&b, "%d cases, %d exit 1, %d exit 2, **%d break a rule**.\n\n", len(rs), count(rs, 1), count(rs, 2), bad)
	fmt.Fprintf(&b, "| # | input | command | exit | message | ok |\n|---:|---|---|---:|---|---|\n")
	for i, r := range rs {
		ok := "yes"
		if r.problem != "" {
			ok = "**NO: " + esc(r.problem) + "**"
		}
		fmt.Fprintf(&b, "| %d | %s | `sptctl %s` | %d | %s | %s |\n", i+1, esc(r.input), esc(strings.Join(r.args, " ")), r.code, esc(r.message), ok)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func count(rs []result, code int) int {
	n := 0
	for _, r := range rs {
		if r.code == code {
			n++
		}
	}
	return n
}

func esc(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

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

// badModels are models broken in every way the issue lists, by name.
func (f *fixtures) badModels() []struct{ what, path string } {
	base, err := os.ReadFile(f.p("base.onnx"))
	if err != nil {
		log.Fatal(err)
	}
	var ms []struct{ what, path string }
	add := func(what, path string) { ms = append(ms, struct{ what, path string }{what, path}) }
	add("empty model file", f.write("bad/empty.onnx", nil))
	add("random bytes as a model", f.write("bad/random.onnx", pseudoRandom(4096)))
	add("model truncated to half", f.write("bad/truncated.onnx", base[:len(base)/2]))
	add("model truncated by one byte", f.write("bad/truncated1.onnx", base[:len(base)-1]))
	add("text file as a model", f.write("bad/text.onnx", []byte("hello, this is not a model\n")))
	os.MkdirAll(f.p("bad/folder.onnx"), 0o755)
	add("a folder as the model", f.p("bad/folder.onnx"))
	add("missing model file", f.p("bad/missing.onnx"))

	// External data: a symbolic link out of the model's folder, "..", an absolute path,
	// a short file, dims of 2^33 with no length.
	ext := func(dir, loc string, edit func(t *onnxpb.TensorProto)) string {
		m := f.model("base.onnx")
		var t *onnxpb.TensorProto
		for _, x := range m.Graph.Initializer {
			if t == nil || len(x.GetRawData()) > len(t.GetRawData()) {
				t = x
			}
		}
		data := t.RawData
		t.RawData = nil
		t.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
		t.ExternalData = []*onnxpb.StringStringEntryProto{{Key: proto.String("location"), Value: proto.String(loc)},
			{Key: proto.String("length"), Value: proto.String(strconv.Itoa(len(data)))}}
		if edit != nil {
			edit(t)
		}
		if !filepath.IsAbs(loc) && !strings.HasPrefix(loc, "..") {
			f.write(filepath.Join(dir, loc), data)
		}
		return f.saveRaw(filepath.Join(dir, "model.onnx"), m)
	}
	f.write("outside/secret.bin", pseudoRandom(1<<16))
	p := ext("bad/extlink", "weights.bin", nil)
	os.Remove(f.p("bad/extlink/weights.bin"))
	os.Symlink(f.p("outside/secret.bin"), f.p("bad/extlink/weights.bin"))
	add("external data: weights.bin a symlink to a file outside the model's folder", p)
	p = ext("bad/extdirlink", "sub/weights.bin", nil)
	os.RemoveAll(f.p("bad/extdirlink/sub"))
	os.Symlink(f.p("outside"), f.p("bad/extdirlink/sub"))
	f.copy(f.p("outside/secret.bin"), "outside/weights.bin")
	add("external data: a folder symlinked outside the model's folder", p)
	add("external data: location ../outside/secret.bin", ext("bad/extdotdot", "../../outside/secret.bin", nil))
	add("external data: absolute location /etc/passwd", ext("bad/extabs", "/etc/passwd", nil))
	add("external data: /proc/self/environ", ext("bad/extproc", "/proc/self/environ", nil))
	add("external data: file shorter than its length", ext("bad/extshort", "weights.bin", func(t *onnxpb.TensorProto) {
		t.ExternalData[1].Value = proto.String("100000000")
	}))
	add("external data: dims 2^33 and no length", ext("bad/ext2p33", "weights.bin", func(t *onnxpb.TensorProto) {
		t.Dims = []int64{1 << 33}
		t.ExternalData = t.ExternalData[:1]
	}))
	add("external data: dims 2^40 and no length", ext("bad/ext2p40", "weights.bin", func(t *onnxpb.TensorProto) {
		t.Dims = []int64{1 << 20, 1 << 20}
		t.ExternalData = t.ExternalData[:1]
	}))

	// Initializer dims.
	dims := func(name, what string, edit func(t *onnxpb.TensorProto)) {
		m := f.model("base.onnx")
		for _, t := range m.Graph.Initializer {
			if len(t.Dims) == 2 {
				edit(t)
				break
			}
		}
		add(what, f.saveRaw("bad/"+name+".onnx", m))
	}
	dims("overflow", "initializer dims whose product overflows int64 (2^62+96 × 4)", func(t *onnxpb.TensorProto) {
		t.Dims = []int64{1<<62 + 96, 4}
	})
	dims("overflow1", "initializer dim 2^62+96", func(t *onnxpb.TensorProto) { t.Dims = []int64{1<<62 + 96} })
	dims("negdim", "negative initializer dim", func(t *onnxpb.TensorProto) { t.Dims[0] = -t.Dims[0] })
	dims("rawshort", "raw data shorter than the dims", func(t *onnxpb.TensorProto) { t.RawData = t.RawData[:len(t.RawData)/2] })

	// Declared inputs.
	input := func(name, what string, shape ...int64) {
		m := f.model("base.onnx")
		var ds []*onnxpb.TensorShapeProto_Dimension
		for _, d := range shape {
			ds = append(ds, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}})
		}
		m.Graph.Input[0].Type.GetTensorType().Shape = &onnxpb.TensorShapeProto{Dim: ds}
		add(what, f.saveRaw("bad/"+name+".onnx", m))
	}
	input("input2p20", "graph input declared 1×3×2^20×2^20", 1, 3, 1<<20, 1<<20)
	input("input2p40c", "graph input declared with 2^40 channels", 1, 1<<40, 32, 32)

	// Graph structure.
	// withInputs are the nodes that read something (and so can be made to read back).
	withInputs := func(m *onnxpb.ModelProto) []*onnxpb.NodeProto {
		var ns []*onnxpb.NodeProto
		for _, n := range m.Graph.Node {
			if len(n.Input) > 0 && len(n.Output) > 0 {
				ns = append(ns, n)
			}
		}
		return ns
	}
	m := f.model("base.onnx")
	ns := withInputs(m)
	n := ns[len(ns)/2]
	n.Input[0] = n.Output[0]
	add("a node that reads its own output (self-loop)", f.saveRaw("bad/selfloop.onnx", m))
	m = f.model("base.onnx")
	ns = withInputs(m)
	a, b := ns[len(ns)/3], ns[2*len(ns)/3]
	a.Input[0] = b.Output[0]
	add("a cycle between two nodes", f.saveRaw("bad/cycle.onnx", m))
	m = f.model("base.onnx")
	for _, n := range m.Graph.Node {
		if n.GetOpType() == "Gelu" || n.GetOpType() == "Erf" || n.GetOpType() == "Softmax" {
			n.OpType = proto.String("NoSuchOp")
			break
		}
	}
	add("an unknown op (NoSuchOp) in a block", f.saveRaw("bad/unknownop.onnx", m))
	add("a valid ONNX model that is no ViT (y = x + x)", f.saveRaw("bad/notvit.onnx", &onnxpb.ModelProto{IrVersion: proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{Name: proto.String("g"),
			Node:   []*onnxpb.NodeProto{{OpType: proto.String("Add"), Input: []string{"x", "x"}, Output: []string{"y"}}},
			Input:  []*onnxpb.ValueInfoProto{{Name: proto.String("x")}},
			Output: []*onnxpb.ValueInfoProto{{Name: proto.String("y")}}}}))
	return ms
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

var _ = png.Decode // the PNG format is written by hand above

func (f *fixtures) cases() []testCase {
	base, other, task := f.p("base.onnx"), f.p("other.onnx"), f.p("task")
	scores, plan, tunable, trained := f.p("scores.safetensors"), f.p("plan.json"), f.p("tunable.onnx"), f.p("trained.onnx")
	x := f.p("x.npy")
	var cs []testCase
	add := func(input string, args ...string) { cs = append(cs, testCase{input, args}) }

	// 1. Bad models, through every command that reads one.
	for _, m := range f.badModels() {
		if !strings.Contains(m.what, "graph input") { // a declaration only what runs the model reads
			add(m.what, "inspect", m.path)
			add(m.what, "allocate", "--model", m.path, "--strategy", "linear", "--out", "plan.json")
			add(m.what, "inject", "--model", m.path, "--plan", plan, "--out", "tunable.onnx")
		}
		switch {
		case strings.Contains(m.what, "graph input"), strings.Contains(m.what, "unknown op"), strings.Contains(m.what, "loop"),
			strings.Contains(m.what, "cycle"), strings.Contains(m.what, "symlink"):
			add(m.what, "eval", "--model", m.path, "--data", task)
			add(m.what, "sensitivity", "--model", m.path, "--data", task, "--batches", "1", "--batch-size", "4", "--out", "s.safetensors")
			add(m.what, "run", "--model", m.path, "--input", x, "--output", "y.npy")
		}
	}

	// 2. An output that is one of the inputs, however spelt.
	os.MkdirAll(f.p("links"), 0o755)
	os.Symlink(base, f.p("links/base-link.onnx"))
	os.Link(base, f.p("links/base-hard.onnx"))
	os.Symlink(x, f.p("links/x-link.npy"))
	os.Symlink(scores, f.p("links/scores-link.safetensors"))
	os.Symlink(tunable, f.p("links/tunable-link.onnx"))
	os.Symlink(f.p("links/base-link.onnx"), f.p("links/plot.png"))
	rel := func(p string) string { r, _ := filepath.Rel(f.in, p); return filepath.Join(f.in, "links", "..", r) }
	add("inject --out = --model", "inject", "--model", base, "--plan", plan, "--out", base)
	add("inject --out = --model, spelt a/../b", "inject", "--model", base, "--plan", plan, "--out", rel(base))
	add("inject --out a symlink to --model", "inject", "--model", base, "--plan", plan, "--out", f.p("links/base-link.onnx"))
	add("inject --out a hard link to --model", "inject", "--model", base, "--plan", plan, "--out", f.p("links/base-hard.onnx"))
	add("inject --out = --plan", "inject", "--model", base, "--plan", plan, "--out", plan)
	add("sensitivity --out = --model", "sensitivity", "--model", base, "--data", task, "--out", base)
	add("sensitivity --out a symlink to --model", "sensitivity", "--model", base, "--data", task, "--out", f.p("links/base-link.onnx"))
	add("sensitivity --plot a symlink (plot.png) to --model", "sensitivity", "--model", base, "--data", task, "--out", "s.safetensors", "--plot", f.p("links/plot.png"))
	add("export --merge --out = --model", "export", "--model", trained, "--merge", "--out", trained)
	add("export --merge --out = the base inject recorded", "export", "--model", trained, "--merge", "--out", base)
	add("export --merge --out a hard link to the base", "export", "--model", trained, "--merge", "--out", f.p("links/base-hard.onnx"))
	add("train --out = --model", "train", "--model", tunable, "--data", task, "--out", tunable)
	add("train --out a symlink to --model", "train", "--model", tunable, "--data", task, "--out", f.p("links/tunable-link.onnx"))
	add("train --checkpoint = --model", "train", "--model", tunable, "--data", task, "--out", "t.onnx", "--checkpoint", tunable)
	add("run --output = --input", "run", "--model", base, "--input", x, "--output", x)
	add("run --output a symlink to --input", "run", "--model", base, "--input", x, "--output", f.p("links/x-link.npy"))
	add("run --output = --model", "run", "--model", base, "--input", x, "--output", base)
	add("allocate --out = --scores", "allocate", "--model", base, "--scores", scores, "--budget", "10%", "--out", scores)
	add("allocate --out a symlink to --scores", "allocate", "--model", base, "--scores", scores, "--budget", "10%", "--out", f.p("links/scores-link.safetensors"))
	add("allocate --out = --model", "allocate", "--model", base, "--strategy", "linear", "--out", base)
	add("tune --out the folder holding --model as tunable.onnx", "tune", "--model", tunable, "--data", task, "--out", f.in)
	add("data fewshot --out = --from", "data", "fewshot", "--from", task, "--out", task)
	add("data fewshot --out a task folder holding the user's file", "data", "fewshot", "--from", *idx, "--classes", "0-4", "--train", "16", "--val", "8", "--test", "8", "--out", f.userTask())
	add("data fewshot --out a non-empty folder it did not write", "data", "fewshot", "--from", *idx, "--classes", "0-4", "--train", "16", "--out", f.p("outside"))
	f.write("existing.png", pseudoRandom(100))
	add("sensitivity --plot onto an existing file, run fails (bad data)", "sensitivity", "--model", base, "--data", f.p("bad"), "--out", "s.safetensors", "--plot", f.p("existing.png"))
	add("an output under a file (train --out FILE/x.onnx)", "train", "--model", tunable, "--data", task, "--out", filepath.Join(f.p("existing.png"), "x.onnx"))
	add("an output that is a folder (allocate --out DIR)", "allocate", "--model", base, "--strategy", "linear", "--out", f.in)

	// 3. Bad flags.
	add("unknown command", "bogus")
	add("unknown subcommand", "data", "bogus")
	add("unknown flag", "inspect", "--bogus", base)
	add("stray argument", "allocate", "--model", base, "stray")
	add("missing required flag", "allocate", "--strategy", "linear")
	add("--budget abc", "allocate", "--model", base, "--scores", scores, "--budget", "abc")
	add("--budget -5", "allocate", "--model", base, "--scores", scores, "--budget", "-5")
	add("--budget 150%", "allocate", "--model", base, "--scores", scores, "--budget", "150%")
	add("--budget larger than the model", "allocate", "--model", base, "--scores", scores, "--budget", "100M")
	add("--rank 0", "allocate", "--model", base, "--strategy", "linear", "--rank", "0")
	add("--rank 1e9", "allocate", "--model", base, "--strategy", "linear", "--rank", "1e9")
	add("--rank 1000000000", "allocate", "--model", base, "--strategy", "uniform", "--rank", "1000000000")
	add("--rank larger than the layers", "allocate", "--model", base, "--strategy", "uniform", "--rank", "4000", "--out", "p.json")
	add("--type foo", "allocate", "--model", base, "--strategy", "linear", "--type", "foo")
	add("--strategy magic", "allocate", "--model", base, "--strategy", "magic")
	add("--classes 1e12", "allocate", "--model", base, "--strategy", "linear", "--classes", "1e12")
	add("--classes 1000000000000", "allocate", "--model", base, "--strategy", "linear", "--classes", "1000000000000")
	add("--classes -3", "allocate", "--model", base, "--strategy", "linear", "--classes", "-3")
	add("--alpha NaN", "allocate", "--model", base, "--scores", scores, "--alpha", "NaN")
	add("sensitivity --classes 1e12", "sensitivity", "--model", base, "--data", task, "--classes", "1e12")
	add("sensitivity --classes 1000000000000", "sensitivity", "--model", base, "--data", task, "--classes", "1000000000000")
	add("sensitivity --batch-size 0", "sensitivity", "--model", base, "--data", task, "--batch-size", "0")
	add("sensitivity --plot with an unknown format", "sensitivity", "--model", base, "--data", task, "--plot", "p.txt")
	add("inject --classes 1000000000000", "inject", "--model", base, "--plan", plan, "--classes", "1000000000000")
	add("inject --dropout 1.5", "inject", "--model", base, "--plan", plan, "--dropout", "1.5")
	add("train --lr NaN", "train", "--model", tunable, "--data", task, "--lr", "NaN", "--out", "t.onnx")
	add("train --lr Inf", "train", "--model", tunable, "--data", task, "--lr", "Inf", "--out", "t.onnx")
	add("train --lr -0.1", "train", "--model", tunable, "--data", task, "--lr", "-0.1", "--out", "t.onnx")
	add("train --epochs 0", "train", "--model", tunable, "--data", task, "--epochs", "0", "--out", "t.onnx")
	add("train --batch-size 1000000000", "train", "--model", tunable, "--data", task, "--batch-size", "1000000000", "--out", "t.onnx")
	add("eval --batch-size 0", "eval", "--model", base, "--data", task, "--batch-size", "0")
	add("export --samples 0", "export", "--model", trained, "--merge", "--out", "m.onnx", "--samples", "0")
	add("export --merge and --sidecar", "export", "--model", trained, "--merge", "--sidecar", "d", "--task", "t")
	add("export --task ../x", "export", "--model", trained, "--sidecar", "d", "--task", "../x")
	add("tune --budget abc (before any stage runs)", "tune", "--model", base, "--data", task, "--out", "tune", "--budget", "abc")
	add("tune --lr NaN", "tune", "--model", base, "--data", task, "--out", "tune", "--lr", "NaN")
	add("tune --type foo", "tune", "--model", base, "--data", task, "--out", "tune", "--type", "foo")
	add("data fewshot --task foo", "data", "fewshot", "--from", *idx, "--out", "fs", "--task", "foo")
	add("data fewshot --classes 5-x", "data", "fewshot", "--from", *idx, "--out", "fs", "--classes", "5-x")
	add("help of an unknown command", "help", "bogus")

	// 4. Bad data.
	img := "images/train/00000.png"
	add("a label of 99999999999 in a VTAB list", "sensitivity", "--model", base, "--data", f.badTask("hugelabel", img+" 99999999999\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a label of 99999999999 (train)", "train", "--model", tunable, "--data", f.badTask("hugelabel2", img+" 99999999999\n", nil), "--val-split", "", "--out", "t.onnx")
	add("a label (77) outside the task's 5 classes", "sensitivity", "--model", base, "--data", f.badTask("label77", img+" 0\n"+img+" 77\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a label (77) outside the task's 5 classes (train)", "train", "--model", tunable, "--data", f.badTask("label77b", img+" 0\n"+img+" 77\n", nil), "--val-split", "", "--out", "t.onnx")
	add("a negative label", "sensitivity", "--model", base, "--data", f.badTask("neglabel", img+" -1\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a label that is no number", "sensitivity", "--model", base, "--data", f.badTask("textlabel", img+" cat\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a missing image", "sensitivity", "--model", base, "--data", f.badTask("missingimg", "images/train/nope.png 0\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("an image path out of the data folder", "sensitivity", "--model", base, "--data", f.badTask("escape", "../../base.onnx 0\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a text file as a PNG", "sensitivity", "--model", base, "--data", f.badTask("textpng", "images/bad.png 0\n", map[string][]byte{"images/bad.png": []byte("not a png")}), "--batches", "1", "--out", "s.safetensors")
	add("a 30000×30000 PNG (header only)", "sensitivity", "--model", base, "--data", f.badTask("hugepng", "images/huge.png 0\n", map[string][]byte{"images/huge.png": hugePNG(30000, 30000)}), "--batches", "1", "--out", "s.safetensors")
	add("a 30000×30000 PNG (eval)", "eval", "--model", base, "--data", f.badTask("hugepng2", "images/huge.png 0\n", map[string][]byte{"images/huge.png": hugePNG(30000, 30000), "test.txt": []byte("images/huge.png 0\n")}))
	add("an empty train list", "sensitivity", "--model", base, "--data", f.badTask("emptylist", "", nil), "--batches", "1", "--out", "s.safetensors")
	add("a missing data folder", "eval", "--model", base, "--data", f.p("nodata"))
	add("a data folder with no lists or images", "eval", "--model", base, "--data", f.p("outside"))
	add("a split that does not exist", "eval", "--model", base, "--data", task, "--split", "nope")
	add("a data set with more classes than the model's head (5-class model, 10-class data)", "eval", "--model", trained, "--data", f.badTask("tenclass", img+" 9\n", map[string][]byte{"test.txt": []byte(img + " 9\n")}))

	// 5. Bad plans (inject).
	add("a plan layer not in the model (blocks.99.q)", "inject", "--model", base, "--plan", f.plan("layer99", func(p map[string]any) {
		firstLayer(p)["name"] = "blocks.99.q"
	}), "--out", "t.onnx")
	add("a plan layer with an unknown weight", "inject", "--model", base, "--plan", f.plan("weight", func(p map[string]any) {
		firstLayer(p)["weight"] = "no.such.weight"
	}), "--out", "t.onnx")
	add("a plan rank of 0", "inject", "--model", base, "--plan", f.plan("rank0", func(p map[string]any) { setRank(p, 0) }), "--out", "t.onnx")
	add("a negative plan rank", "inject", "--model", base, "--plan", f.plan("rankneg", func(p map[string]any) { setRank(p, -4) }), "--out", "t.onnx")
	add("a plan rank of 1e9", "inject", "--model", base, "--plan", f.plan("rankhuge", func(p map[string]any) { setRank(p, 1e9) }), "--out", "t.onnx")
	add("plan totals that disagree with its layers", "inject", "--model", base, "--plan", f.plan("totals", func(p map[string]any) {
		p["totals"].(map[string]any)["total"] = 12345.0
	}), "--out", "t.onnx")
	add("a plan head of 10^12 classes", "inject", "--model", base, "--plan", f.plan("headhuge", func(p map[string]any) {
		p["head"].(map[string]any)["classes"] = 1e12
	}), "--out", "t.onnx")
	add("a plan of another model", "inject", "--model", base, "--plan", f.p("other-plan.json"), "--out", "t.onnx")
	add("a plan that is not JSON", "inject", "--model", base, "--plan", f.write("badplans/text.json", []byte("plan: yes")), "--out", "t.onnx")
	pb, _ := os.ReadFile(plan)
	add("a truncated plan", "inject", "--model", base, "--plan", f.write("badplans/trunc.json", pb[:len(pb)/2]), "--out", "t.onnx")
	add("a model file as the plan", "inject", "--model", base, "--plan", base, "--out", "t.onnx")

	// 6. Bad score files (allocate).
	sc := func(what, name string, edit func(h map[string]any, data []byte) []byte) {
		add(what, "allocate", "--model", base, "--scores", f.scoreFile(name, edit), "--budget", "10%", "--out", "p.json")
	}
	sc("negative scores", "negative", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		a, _ := offsets(e)
		putFloat(d, a, -5)
		return d
	})
	sc("an infinite score", "inf", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		a, _ := offsets(e)
		putFloat(d, a, float32(math.Inf(1)))
		return d
	})
	sc("a NaN score", "nan", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		a, _ := offsets(e)
		putFloat(d, a, float32(math.NaN()))
		return d
	})
	sc("overlapping offsets", "overlap", func(h map[string]any, d []byte) []byte {
		names := []string{}
		for k := range h {
			if k != "__metadata__" {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		e0, e1 := h[names[0]].(map[string]any), h[names[1]].(map[string]any)
		a0, _ := offsets(e0)
		a1, b1 := offsets(e1)
		e1["data_offsets"] = []any{float64(a0), float64(a0 + b1 - a1)}
		return d
	})
	sc("a transposed shape", "transposed", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		s := e["shape"].([]any)
		if s[0] == s[1] {
			s[0], s[1] = s[0].(float64)*2, s[1].(float64)/2
		} else {
			s[0], s[1] = s[1], s[0]
		}
		return d
	})
	sc("a shape of 2^62 × 4 (overflows)", "overflow", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		e["shape"] = []any{float64(1 << 62), 4.0}
		return d
	})
	sc("an F64 tensor", "f64", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		e["dtype"] = "F64"
		return d
	})
	sc("a tensor not in the model", "unknownname", func(h map[string]any, d []byte) []byte {
		k, e := firstTensor(h)
		delete(h, k)
		h["no.such.weight"] = e
		return d
	})
	sc("offsets past the end of the file", "pastend", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		a, b := offsets(e)
		e["data_offsets"] = []any{float64(a + len(d)), float64(b + len(d))}
		return d
	})
	sb, _ := os.ReadFile(scores)
	add("a truncated score file", "allocate", "--model", base, "--scores", f.write("badscores/trunc.safetensors", sb[:len(sb)/2]), "--budget", "10%", "--out", "p.json")
	huge := append([]byte(nil), sb...)
	binary.LittleEndian.PutUint64(huge, 1<<60)
	add("a score header length of 2^60", "allocate", "--model", base, "--scores", f.write("badscores/hugeheader.safetensors", huge), "--budget", "10%", "--out", "p.json")
	add("an empty score file", "allocate", "--model", base, "--scores", f.write("badscores/empty.safetensors", nil), "--budget", "10%", "--out", "p.json")
	add("the scores of another model", "allocate", "--model", other, "--scores", scores, "--budget", "10%", "--out", "p.json")

	// 7. Sidecars, adapters, checkpoints of another base; NaN training.
	sideBad := f.p("sidebad")
	filepath.WalkDir(f.p("sidecar"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			f.copy(p, filepath.Join("sidebad", filepath.Base(p)))
		}
		return nil
	})
	bd, _ := os.ReadFile(filepath.Join(sideBad, "base.data"))
	for i := 0; i < len(bd); i += 4096 {
		bd[i] ^= 0x55
	}
	f.write("sidebad/base.data", bd)
	add("a sidecar whose base.data holds other weights", "eval", "--model", filepath.Join(sideBad, "t.onnx"), "--data", task)
	add("a sidecar whose base.data holds other weights (run)", "run", "--model", filepath.Join(sideBad, "t.onnx"), "--input", x, "--output", "y.npy")
	ck, _ := os.ReadFile(trained + ".ckpt")
	if len(ck) > 0 {
		add("a truncated checkpoint (train --resume)", "train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "2", "--batch-size", "8",
			"--checkpoint", f.write("badckpt/trunc.ckpt", ck[:len(ck)/2]), "--resume", "--out", "t.onnx")
	}
	add("a checkpoint from another model (train --resume)", "train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "2", "--batch-size", "8",
		"--checkpoint", f.copy(scores, "badckpt/other.ckpt"), "--resume", "--out", "t.onnx")
	add("a base model that is not the one injected from (export --base other)", "export", "--model", trained, "--merge", "--base", other, "--out", "m.onnx")
	add("--lr 1e30 (training diverges to NaN/Inf)", "train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "1", "--batch-size", "8", "--lr", "1e30", "--out", "t.onnx")
	add("an adapter file that is a model", "eval", "--model", base, "--data", task, "--adapter", base)

	// 8. Bad .npy inputs (run).
	add("a truncated .npy", "run", "--model", base, "--input", f.write("badnpy/trunc.npy", npyHeader("<f4", "(2, 3, 32, 32)", make([]byte, 100))), "--output", "y.npy")
	add("a .npy declaring 2^40 × 2^40 elements", "run", "--model", base, "--input", f.write("badnpy/huge.npy", npyHeader("<f4", "(1099511627776, 1099511627776)", nil)), "--output", "y.npy")
	add("a .npy of float64", "run", "--model", base, "--input", f.write("badnpy/f8.npy", npyHeader("<f8", "(1, 3, 32, 32)", make([]byte, 8*3*32*32))), "--output", "y.npy")
	add("a .npy of the wrong shape", "run", "--model", base, "--input", f.write("badnpy/shape.npy", npyHeader("<f4", "(1, 3, 16, 16)", make([]byte, 4*3*16*16))), "--output", "y.npy")
	add("a .npy with a bad magic", "run", "--model", base, "--input", f.write("badnpy/magic.npy", []byte("PK\x03\x04 not numpy")), "--output", "y.npy")
	add("a .npy with a negative dim", "run", "--model", base, "--input", f.write("badnpy/neg.npy", npyHeader("<f4", "(-1, 3, 32, 32)", nil)), "--output", "y.npy")
	return cs
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
