package export

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Files of a sidecar folder.
const (
	BaseData = "base.data" // the base model's initializers, shared by every task
	BaseJSON = "base.json" // what base.data holds (BaseInfo)
)

// BaseFormat names the layout of base.data that BaseInfo describes.
const BaseFormat = "sptctl-base-1"

// BaseInfo is base.json: which base model base.data holds, and its size and hash, so
// that a later export can check the file byte for byte before reusing it.
type BaseInfo struct {
	Format      string `json:"format"`      // BaseFormat
	Fingerprint string `json:"fingerprint"` // onnxio.Fingerprint of the base model
	Size        int64  `json:"size"`        // bytes of base.data
	SHA256      string `json:"sha256"`      // hex SHA-256 of base.data
	Align       int64  `json:"align"`       // every tensor starts at a multiple of Align
	Tensors     int    `json:"tensors"`     // initializers it holds, in name order
}

// SidecarOptions control SidecarWith.
type SidecarOptions struct {
	// Verify, if set, checks the staged DIR/TASK.onnx before anything is moved into DIR.
	Verify Verify
	// Align is the alignment of each tensor in base.data (default 4096, the page size,
	// so ONNX Runtime can map the weights instead of copying them).
	Align int64
}

// SidecarReport says what Sidecar wrote.
type SidecarReport struct {
	Model       string `json:"model"`     // DIR/TASK.onnx
	TaskData    string `json:"task_data"` // DIR/TASK.data
	BaseData    string `json:"base_data"` // DIR/base.data
	BaseWritten bool   `json:"base_written"`
	ModelBytes  int64  `json:"model_bytes"`
	TaskBytes   int64  `json:"task_bytes"`
	BaseBytes   int64  `json:"base_bytes"`
	// BaseTensors and TaskTensors count the model's initializers read from base.data
	// and from TASK.data (tensors without data stay in TASK.onnx).
	BaseTensors int   `json:"base_tensors"`
	TaskTensors int   `json:"task_tensors"`
	TaskParams  int64 `json:"task_params"` // elements of the task tensors
	// Inline counts the small integer tensors (shapes, pads, indices of a few sparse
	// entries) kept inside TASK.onnx: shape inference needs them before external data
	// is loaded.
	Inline int `json:"inline"`
}

// inlineLimit is the size below which integer tensors stay inside TASK.onnx.
const inlineLimit = 4096

// String describes the export in a few lines.
func (r *SidecarReport) String() string {
	var b strings.Builder
	how := "reused, checked byte for byte"
	if r.BaseWritten {
		how = "written"
	}
	fmt.Fprintf(&b, "%s: %s bytes (%d tensors, %s)\n", r.BaseData, commas(r.BaseBytes), r.BaseTensors, how)
	fmt.Fprintf(&b, "%s: %s bytes (%d task tensors, %s values)\n", r.TaskData, commas(r.TaskBytes), r.TaskTensors, commas(r.TaskParams))
	fmt.Fprintf(&b, "%s: %s bytes (graph)\n", r.Model, commas(r.ModelBytes))
	if r.BaseBytes > 0 {
		fmt.Fprintf(&b, "task files: %.2f%% of the base's size\n", 100*float64(r.TaskBytes+r.ModelBytes)/float64(r.BaseBytes))
	}
	return b.String()
}

func commas(n int64) string {
	if n < 0 {
		return "-" + commas(-n)
	}
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

var taskNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// CheckTaskName refuses task names that are not plain file names, or that clash with
// the shared files.
func CheckTaskName(task string) error {
	if !taskNameRE.MatchString(task) || strings.HasSuffix(task, ".") {
		return fmt.Errorf("task name %q: use letters, digits, '.', '_' and '-' (a file name, no folders)", task)
	}
	if task == "base" {
		return fmt.Errorf("task name %q is taken by the shared %s", task, BaseData)
	}
	return nil
}

// Sidecar is SidecarWith without options.
func Sidecar(m, base *onnxpb.ModelProto, dir, task string) (*SidecarReport, error) {
	return SidecarWith(m, base, dir, task, SidecarOptions{})
}

// SidecarWith exports m, a trained model written by inject (and train), as DIR/TASK.onnx
// whose tensors are external data: every initializer that is byte for byte the base
// model's (same name, type, shape and data) points into DIR/base.data, which holds all
// of base's initializers in name order, each aligned; the task's tensors (injected
// modules, the head, tuned vectors: whatever is new or differs from the base) go to
// DIR/TASK.data. Small integer tensors (shapes, pads: under 4 KiB) stay inside
// TASK.onnx, because shape inference reads them before external data is loaded. ONNX
// Runtime loads DIR/TASK.onnx directly.
//
// base.data is written only if absent (with base.json, its BaseInfo). If present, it
// must be this base's, byte for byte (its hash is checked), and is reused untouched; a
// file that belongs to another base or differs is refused. Everything is written in a
// staging folder inside DIR, checked by opt.Verify, and then renamed into place: on any
// error nothing is written. m and base are not changed.
func SidecarWith(m, base *onnxpb.ModelProto, dir, task string, opt SidecarOptions) (*SidecarReport, error) {
	if err := CheckTaskName(task); err != nil {
		return nil, err
	}
	p, err := Plan(m)
	if err != nil {
		return nil, err
	}
	if err := CheckBase(p, base); err != nil {
		return nil, err
	}
	if opt.Align <= 0 {
		opt.Align = 4096
	}
	bl, err := layoutBase(base, opt.Align, p.BaseFingerprint)
	if err != nil {
		return nil, err
	}
	rep := &SidecarReport{Model: filepath.Join(dir, task+".onnx"), TaskData: filepath.Join(dir, task+".data"),
		BaseData: filepath.Join(dir, BaseData), BaseBytes: bl.size}
	existing, err := checkExistingBase(dir, bl)
	if err != nil {
		return nil, err
	}
	st, err := newStage(dir)
	if err != nil {
		return nil, fmt.Errorf("sidecar: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			st.abort()
		}
	}()
	if rep.BaseWritten, err = stageBase(st, dir, bl, existing); err != nil {
		return nil, err
	}
	taskData, model := task+".data", task+".onnx"
	tensors, td, err := placeTensors(m, bl, taskData, rep)
	if err != nil {
		return nil, err
	}
	if err := onnxio.WriteFileAtomic(st.path(taskData), td.writeTo); err != nil {
		return nil, fmt.Errorf("sidecar: write %s: %w", taskData, err)
	}
	if err := writeModel(st.path(model), m, tensors); err != nil {
		return nil, fmt.Errorf("sidecar: write %s: %w", model, err)
	}
	if fi, err := os.Stat(st.path(model)); err == nil {
		rep.ModelBytes = fi.Size()
	}
	if opt.Verify != nil {
		if err := opt.Verify(st.path(model)); err != nil {
			return nil, err
		}
	}
	// Commit: base.data (only if new, never over an existing file), base.json, then the
	// task's data and model.
	if err := commitBase(st, dir, bl, rep.BaseWritten); err != nil {
		return nil, err
	}
	if err := st.commit(taskData, model); err != nil {
		return nil, fmt.Errorf("sidecar: %w", err)
	}
	ok = true
	return rep, nil
}

// stageBase puts base.data beside the staged model: a link to the existing file, or
// a new file (written reports which).
func stageBase(st *stage, dir string, bl *baseLayout, existing bool) (written bool, err error) {
	if existing {
		if err := os.Link(filepath.Join(dir, BaseData), st.path(BaseData)); err != nil {
			if err := os.Symlink(filepath.Join("..", BaseData), st.path(BaseData)); err != nil {
				return false, fmt.Errorf("sidecar: %w", err)
			}
		}
		return false, nil
	}
	if err := onnxio.WriteFileAtomic(st.path(BaseData), bl.writeTo); err != nil {
		return false, fmt.Errorf("sidecar: write %s: %w", BaseData, err)
	}
	return true, nil
}

// taskTensors are the tensors of TASK.data and their offsets in it.
type taskTensors struct {
	list []*onnxpb.TensorProto
	off  []int64
}

func (td *taskTensors) writeTo(w io.Writer) error {
	var at int64
	for i, t := range td.list {
		raw, _ := onnxio.Bytes(t)
		if _, err := w.Write(make([]byte, td.off[i]-at)); err != nil {
			return err
		}
		if _, err := w.Write(raw); err != nil {
			return err
		}
		at = td.off[i] + int64(len(raw))
	}
	return nil
}

// placeTensors decides where each initializer of m goes: inside TASK.onnx (small
// integer tensors), into base.data (byte for byte the base's) or into TASK.data. It
// returns the initializers TASK.onnx gets (external ones as headers) and the tensors of
// TASK.data, and counts them in rep.
func placeTensors(m *onnxpb.ModelProto, bl *baseLayout, taskData string, rep *SidecarReport) ([]*onnxpb.TensorProto, *taskTensors, error) {
	var tensors []*onnxpb.TensorProto
	td := &taskTensors{}
	var off int64
	for _, t := range m.GetGraph().GetInitializer() {
		raw, err := onnxio.Bytes(t)
		if err != nil {
			return nil, nil, err
		}
		if len(raw) == 0 || (t.GetDataType() != onnxio.Float && len(raw) < inlineLimit) {
			// Shape-like integer tensors stay in the model: shape inference reads them
			// when the model loads, before external data is brought in.
			tensors = append(tensors, t)
			rep.Inline++
			continue
		}
		if e, ok := bl.entries[t.GetName()]; ok && e.t.GetDataType() == t.GetDataType() && slices.Equal(e.t.Dims, t.Dims) && bytes.Equal(e.raw, raw) {
			tensors = append(tensors, external(t, BaseData, e.off, int64(len(raw))))
			rep.BaseTensors++
			continue
		}
		off = alignUp(off, 64)
		td.list, td.off = append(td.list, t), append(td.off, off)
		tensors = append(tensors, external(t, taskData, off, int64(len(raw))))
		off += int64(len(raw))
		rep.TaskTensors++
		rep.TaskParams += onnxio.NumElements(t.Dims)
	}
	rep.TaskBytes = off
	return tensors, td, nil
}

// writeModel writes m with the given initializers in place of its own (m is left as
// it was).
func writeModel(path string, m *onnxpb.ModelProto, tensors []*onnxpb.TensorProto) error {
	g := m.GetGraph()
	saved := g.Initializer
	g.Initializer = tensors
	defer func() { g.Initializer = saved }()
	err := onnxio.WriteFileAtomic(path, func(w io.Writer) error { return onnxio.EncodeTo(w, m) })
	if n := proto.Size(m); err == nil && n > onnxio.MaxProtoSize {
		err = fmt.Errorf("the graph is %d bytes even without its tensors, over the 2 GiB protobuf limit", n)
	}
	return err
}

// commitBase links a newly written base.data into dir (never over an existing file)
// and writes base.json; for a reused base.data it writes base.json only if missing.
func commitBase(st *stage, dir string, bl *baseLayout, written bool) error {
	basePath, jsonPath := filepath.Join(dir, BaseData), filepath.Join(dir, BaseJSON)
	info, _ := json.MarshalIndent(bl.info(), "", "  ")
	writeInfo := func() error {
		return onnxio.WriteFileAtomic(jsonPath, func(w io.Writer) error {
			_, err := w.Write(append(info, '\n'))
			return err
		})
	}
	if !written {
		if _, err := os.Stat(jsonPath); err != nil {
			_ = writeInfo()
		}
		return nil
	}
	if err := os.Link(st.path(BaseData), basePath); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("sidecar: %s appeared while exporting; export again", basePath)
		}
		return fmt.Errorf("sidecar: %w", err)
	}
	if err := writeInfo(); err != nil {
		os.Remove(basePath)
		return fmt.Errorf("sidecar: %w", err)
	}
	return nil
}

func alignUp(off, align int64) int64 { return (off + align - 1) / align * align }

// external returns a copy of t's header pointing at location (no data).
func external(t *onnxpb.TensorProto, location string, off, length int64) *onnxpb.TensorProto {
	return &onnxpb.TensorProto{
		Name: proto.String(t.GetName()), DataType: proto.Int32(t.GetDataType()), Dims: slices.Clone(t.Dims),
		DocString: t.DocString, DataLocation: onnxpb.TensorProto_EXTERNAL.Enum(),
		ExternalData: []*onnxpb.StringStringEntryProto{
			{Key: proto.String("location"), Value: proto.String(location)},
			{Key: proto.String("offset"), Value: proto.String(strconv.FormatInt(off, 10))},
			{Key: proto.String("length"), Value: proto.String(strconv.FormatInt(length, 10))},
		},
	}
}

type baseEntry struct {
	t   *onnxpb.TensorProto
	raw []byte
	off int64
}

// baseLayout is where each base initializer sits in base.data.
type baseLayout struct {
	fingerprint string
	align       int64
	order       []string
	entries     map[string]baseEntry
	size        int64
	sum         string // hex SHA-256, computed on first use
}

func layoutBase(base *onnxpb.ModelProto, align int64, fingerprint string) (*baseLayout, error) {
	l := &baseLayout{fingerprint: fingerprint, align: align, entries: map[string]baseEntry{}}
	for _, t := range base.GetGraph().GetInitializer() {
		if _, dup := l.entries[t.GetName()]; dup {
			return nil, fmt.Errorf("base model: initializer %q appears twice", t.GetName())
		}
		raw, err := onnxio.Bytes(t)
		if err != nil {
			return nil, fmt.Errorf("base model: %w", err)
		}
		l.entries[t.GetName()] = baseEntry{t: t, raw: raw}
		l.order = append(l.order, t.GetName())
	}
	slices.Sort(l.order)
	for _, name := range l.order {
		e := l.entries[name]
		if len(e.raw) == 0 {
			continue
		}
		e.off = alignUp(l.size, align)
		l.size = e.off + int64(len(e.raw))
		l.entries[name] = e
	}
	return l, nil
}

func (l *baseLayout) writeTo(w io.Writer) error {
	var at int64
	zeros := make([]byte, l.align)
	for _, name := range l.order {
		e := l.entries[name]
		if len(e.raw) == 0 {
			continue
		}
		if _, err := w.Write(zeros[:e.off-at]); err != nil {
			return err
		}
		if _, err := w.Write(e.raw); err != nil {
			return err
		}
		at = e.off + int64(len(e.raw))
	}
	return nil
}

func (l *baseLayout) sha256() string {
	if l.sum == "" {
		h := sha256.New()
		l.writeTo(h)
		l.sum = hex.EncodeToString(h.Sum(nil))
	}
	return l.sum
}

func (l *baseLayout) info() BaseInfo {
	return BaseInfo{Format: BaseFormat, Fingerprint: l.fingerprint, Size: l.size, SHA256: l.sha256(), Align: l.align, Tensors: len(l.order)}
}

// checkExistingBase reports whether DIR/base.data exists and holds this base's weights
// byte for byte; it fails if it exists but holds anything else.
func checkExistingBase(dir string, l *baseLayout) (bool, error) {
	path := filepath.Join(dir, BaseData)
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("sidecar: %w", err)
	}
	var info BaseInfo
	if b, err := os.ReadFile(filepath.Join(dir, BaseJSON)); err == nil {
		if err := json.Unmarshal(b, &info); err != nil {
			return false, fmt.Errorf("sidecar: %s: %v", filepath.Join(dir, BaseJSON), err)
		}
		if info.Fingerprint != l.fingerprint {
			return false, fmt.Errorf("sidecar: %s belongs to another base model (fingerprint %s; this model's base is %s); export into another folder",
				path, onnxio.ShortFingerprint(info.Fingerprint), onnxio.ShortFingerprint(l.fingerprint))
		}
	}
	if !fi.Mode().IsRegular() || fi.Size() != l.size {
		return false, fmt.Errorf("sidecar: %s is %d bytes, but this base model's weights take %d: it belongs to another base or was changed; remove it or export into another folder",
			path, fi.Size(), l.size)
	}
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("sidecar: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, fmt.Errorf("sidecar: read %s: %w", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != l.sha256() {
		return false, fmt.Errorf("sidecar: %s does not hold this base model's weights byte for byte (SHA-256 %s…, want %s…): it belongs to another base or was changed; remove it or export into another folder",
			path, got[:12], l.sha256()[:12])
	}
	return true, nil
}
