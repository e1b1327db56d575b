// Package ort runs ONNX models with ONNX Runtime.
//
// It wraps github.com/yalue/onnxruntime_go (C API version 24, so ONNX Runtime 1.24
// or newer) around the shared library the project's set-up step installs at
// third_party/onnxruntime/libonnxruntime.so.1. Call Init once (it is idempotent),
// then Open a model and Run it on float32 (or int64) tensors of any shape the model
// allows. A Session may be used by several goroutines at once; Close it when done.
package ort

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	onnxruntime "github.com/yalue/onnxruntime_go"

	"github.com/sptctl/sptctl/internal/osmem"
)

// EnvLib is the environment variable that names the ONNX Runtime shared library.
const EnvLib = "SPTCTL_ORT_LIB"

// libRel is where the set-up step puts the library, relative to the module root.
var libRel = filepath.Join("third_party", "onnxruntime", "libonnxruntime.so.1")

const howToFix = "run `make setup` or set " + EnvLib + " to the path of libonnxruntime.so.1"

// Tensor is a dense tensor in C (row-major) order. Float models use Data; Int64
// holds the data of int64 inputs and outputs instead (Data is then nil).
type Tensor struct {
	Shape []int64
	Data  []float32
	Int64 []int64
}

// IOInfo describes one model input or output as ONNX Runtime sees it.
type IOInfo struct {
	Name string
	// Shape has -1 for symbolic (dynamic) dimensions; nil when the model declares
	// no shape.
	Shape []int64
	// Type is the element type: "float32", "int64", ... ("" for non-tensors).
	Type string
}

func (x IOInfo) String() string {
	return fmt.Sprintf("%s %s%s", x.Name, x.Type, shapeString(x.Shape))
}

var (
	initMu   sync.Mutex
	initDone bool
	initLib  string
	verbose  bool
)

// SetVerbose makes ONNX Runtime's own log show warnings and errors (on stderr, in its
// own format). By default only fatal messages show: sptctl reports every error itself,
// in one line. It takes effect if called before the first Init.
func SetVerbose(on bool) {
	initMu.Lock()
	defer initMu.Unlock()
	verbose = on
}

// Init loads ONNX Runtime. It is idempotent and safe to call from several
// goroutines. The library is, in order: $SPTCTL_ORT_LIB; the first
// third_party/onnxruntime/libonnxruntime.so.1 found in a folder with a go.mod,
// searching upward from the working directory; ../third_party/onnxruntime/ or ./
// next to the executable.
func Init() error {
	initMu.Lock()
	defer initMu.Unlock()
	if initDone {
		return nil
	}
	lib, err := findLibrary()
	if err != nil {
		return err
	}
	onnxruntime.SetSharedLibraryPath(lib)
	level := onnxruntime.WithLogLevelFatal()
	if verbose {
		level = onnxruntime.WithLogLevelWarning()
	}
	if err := onnxruntime.InitializeEnvironment(level); err != nil {
		return fmt.Errorf("ort: loading ONNX Runtime from %s: %w (it must be 1.24 or newer; %s)", lib, err, howToFix)
	}
	initDone, initLib = true, lib
	return nil
}

// LibraryPath is the ONNX Runtime library Init loaded ("" before Init).
func LibraryPath() string {
	initMu.Lock()
	defer initMu.Unlock()
	return initLib
}

// Version is the loaded ONNX Runtime's version, e.g. "1.30.0" ("" before Init).
func Version() string {
	if !onnxruntime.IsInitialized() {
		return ""
	}
	return onnxruntime.GetVersion()
}

func findLibrary() (string, error) {
	if p := os.Getenv(EnvLib); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", fmt.Errorf("ort: %s=%q: %w", EnvLib, p, err)
		}
		if st, err := os.Stat(abs); err != nil || st.IsDir() {
			return "", fmt.Errorf("ort: %s=%q is not a file (%v); %s", EnvLib, p, err, howToFix)
		}
		return abs, nil
	}
	var tried []string
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; {
			if isFile(filepath.Join(dir, "go.mod")) {
				p := filepath.Join(dir, libRel)
				if isFile(p) {
					return p, nil
				}
				tried = append(tried, p)
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	if exe, err := os.Executable(); err == nil {
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		dir := filepath.Dir(exe)
		for _, p := range []string{
			filepath.Join(dir, "..", libRel),
			filepath.Join(dir, "libonnxruntime.so.1"),
		} {
			p = filepath.Clean(p)
			if isFile(p) {
				return p, nil
			}
			tried = append(tried, p)
		}
	}
	return "", fmt.Errorf("ort: ONNX Runtime library not found (looked for %s); %s",
		strings.Join(tried, ", "), howToFix)
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// Session is a loaded model.
type Session struct {
	name    string // the model path, or a description for OpenBytes
	mu      sync.RWMutex
	s       *onnxruntime.DynamicAdvancedSession
	inputs  []IOInfo
	outputs []IOInfo
}

// Option is a setting of Open and OpenBytes.
type Option func(*options)

type options struct {
	threads     int  // intra-op threads; 0: runtime.NumCPU()
	unoptimized bool // no graph optimisation
}

// Threads makes the session compute with n intra-op threads (and one inter-op
// thread: sessions run their nodes in order). Without it a session uses
// runtime.NumCPU(), the cores the process may run on. n < 1 is refused by Open.
func Threads(n int) Option { return func(o *options) { o.threads = n } }

// Unoptimized runs the graph as written, without ONNX Runtime's graph optimisations.
// They fold constant subgraphs into new initializers while the old ones are still
// held: on an injected vit_b_16 (sparse deltas as Add(W, ScatterND(…)) of constants)
// opening the session then peaks at 3.3x the model file instead of 1.9x. For a
// reference run whose memory matters more than its speed.
func Unoptimized() Option { return func(o *options) { o.unoptimized = true } }

func collect(opts []Option) (options, error) {
	o := options{threads: runtime.NumCPU()}
	for _, f := range opts {
		f(&o)
	}
	if o.threads < 1 {
		return o, fmt.Errorf("ort: %d intra-op threads: want at least 1", o.threads)
	}
	return o, nil
}

// Open loads the model at modelPath; external data files are found relative to the
// model's folder.
func Open(modelPath string, opts ...Option) (*Session, error) {
	o, err := collect(opts)
	if err != nil {
		return nil, err
	}
	if err := Init(); err != nil {
		return nil, err
	}
	f, size, err := openModelFile(modelPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return open(modelPath, f, size, o,
		func(opts *onnxruntime.SessionOptions) ([]onnxruntime.InputOutputInfo, []onnxruntime.InputOutputInfo, error) {
			return onnxruntime.GetInputOutputInfoWithOptions(modelPath, opts)
		},
		func(in, out []string, opts *onnxruntime.SessionOptions) (*onnxruntime.DynamicAdvancedSession, error) {
			return onnxruntime.NewDynamicAdvancedSession(modelPath, in, out, opts)
		})
}

// OpenBytes loads a model from its serialized bytes (the model must not use
// external data).
func OpenBytes(model []byte, opts ...Option) (*Session, error) {
	o, err := collect(opts)
	if err != nil {
		return nil, err
	}
	if err := Init(); err != nil {
		return nil, err
	}
	name := fmt.Sprintf("in-memory model (%d bytes)", len(model))
	if len(model) == 0 {
		return nil, fmt.Errorf("ort: %s: empty model", name)
	}
	return open(name, bytes.NewReader(model), int64(len(model)), o,
		func(*onnxruntime.SessionOptions) ([]onnxruntime.InputOutputInfo, []onnxruntime.InputOutputInfo, error) {
			return onnxruntime.GetInputOutputInfoWithONNXData(model)
		},
		func(in, out []string, opts *onnxruntime.SessionOptions) (*onnxruntime.DynamicAdvancedSession, error) {
			return onnxruntime.NewDynamicAdvancedSessionWithONNXData(model, in, out, opts)
		})
}

// ortInfo is how ONNX Runtime itself reports a model's inputs and outputs.
type ortInfo func(*onnxruntime.SessionOptions) ([]onnxruntime.InputOutputInfo, []onnxruntime.InputOutputInfo, error)

// askORT builds a throwaway session (no graph optimisation, one thread) to learn
// the model's inputs and outputs.
func askORT(info ortInfo) (ins, outs []IOInfo, err error) {
	opts, err := onnxruntime.NewSessionOptions()
	if err != nil {
		return nil, nil, err
	}
	defer opts.Destroy()
	if err := opts.SetGraphOptimizationLevel(onnxruntime.GraphOptimizationLevelDisableAll); err != nil {
		return nil, nil, err
	}
	if err := opts.SetIntraOpNumThreads(1); err != nil {
		return nil, nil, err
	}
	oi, oo, err := info(opts)
	if err != nil {
		return nil, nil, err
	}
	for _, x := range oi {
		ins = append(ins, convertInfo(x))
	}
	for _, x := range oo {
		outs = append(outs, convertInfo(x))
	}
	return ins, outs, nil
}

func open(name string, model io.ReaderAt, size int64, o options, info ortInfo,
	create func(in, out []string, opts *onnxruntime.SessionOptions) (*onnxruntime.DynamicAdvancedSession, error),
) (*Session, error) {
	// The dynamic session API needs the input and output names up front and does
	// not report them afterwards. Read them from the protobuf (cheap); if that
	// fails, ask ONNX Runtime, whose error is then the one the user sees.
	ins, outs, err := scanIO(model, size)
	if err != nil {
		if ins, outs, err = askORT(info); err != nil {
			return nil, fmt.Errorf("ort: %s: %w", name, err)
		}
	}
	if len(ins) == 0 || len(outs) == 0 {
		return nil, fmt.Errorf("ort: %s: model has %d inputs and %d outputs; need at least one of each", name, len(ins), len(outs))
	}
	s := &Session{name: name, inputs: ins, outputs: outs}
	var inNames, outNames []string
	for _, x := range ins {
		inNames = append(inNames, x.Name)
	}
	for _, x := range outs {
		outNames = append(outNames, x.Name)
	}
	opts, err := onnxruntime.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("ort: %s: %w", name, err)
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(o.threads); err != nil {
		return nil, fmt.Errorf("ort: %s: %d intra-op threads: %w", name, o.threads, err)
	}
	if err := opts.SetInterOpNumThreads(1); err != nil {
		return nil, fmt.Errorf("ort: %s: %w", name, err)
	}
	if o.unoptimized {
		if err := opts.SetGraphOptimizationLevel(onnxruntime.GraphOptimizationLevelDisableAll); err != nil {
			return nil, fmt.Errorf("ort: %s: %w", name, err)
		}
	}
	s.s, err = create(inNames, outNames, opts)
	if err != nil {
		return nil, fmt.Errorf("ort: %s: %w", name, err)
	}
	return s, nil
}

func convertInfo(x onnxruntime.InputOutputInfo) IOInfo {
	info := IOInfo{Name: x.Name}
	if x.OrtValueType == onnxruntime.ONNXTypeTensor {
		info.Type = elemTypeName(x.DataType)
		// ORT reports an undeclared shape as rank 0; scalar inputs are not
		// supported anyway, so call it unknown.
		if len(x.Dimensions) > 0 {
			info.Shape = slices.Clone([]int64(x.Dimensions))
		}
	} else {
		info.Type = x.OrtValueType.String()
	}
	return info
}

func elemTypeName(t onnxruntime.TensorElementDataType) string {
	switch t {
	case onnxruntime.TensorElementDataTypeFloat:
		return "float32"
	case onnxruntime.TensorElementDataTypeInt64:
		return "int64"
	case onnxruntime.TensorElementDataTypeInt32:
		return "int32"
	case onnxruntime.TensorElementDataTypeDouble:
		return "float64"
	case onnxruntime.TensorElementDataTypeFloat16:
		return "float16"
	case onnxruntime.TensorElementDataTypeBFloat16:
		return "bfloat16"
	case onnxruntime.TensorElementDataTypeUint8:
		return "uint8"
	case onnxruntime.TensorElementDataTypeInt8:
		return "int8"
	case onnxruntime.TensorElementDataTypeBool:
		return "bool"
	case onnxruntime.TensorElementDataTypeString:
		return "string"
	}
	return t.String()
}

// Name is the model path (or, for OpenBytes, a description) used in errors.
func (s *Session) Name() string { return s.name }

// Inputs describes the model's inputs, in the model's order.
func (s *Session) Inputs() []IOInfo { return cloneInfo(s.inputs) }

// Outputs describes the model's outputs, in the model's order.
func (s *Session) Outputs() []IOInfo { return cloneInfo(s.outputs) }

func cloneInfo(v []IOInfo) []IOInfo {
	out := make([]IOInfo, len(v))
	for i, x := range v {
		out[i] = x
		out[i].Shape = slices.Clone(x.Shape)
	}
	return out
}

// Run runs the model on inputs (one tensor for each model input, by name) and
// returns every model output by name. Each input is checked against Inputs()
// (element type, rank, fixed dimensions, data length) before ONNX Runtime sees it.
func (s *Session) Run(inputs map[string]Tensor) (map[string]Tensor, error) {
	out, err := s.run(inputs, nil)
	if err != nil {
		return nil, fmt.Errorf("ort: %s: %w", s.name, err)
	}
	return out, nil
}

// run feeds inputs to the session and collects its outputs; opts (nil for none)
// carries per-run settings such as active LoRA adapters.
func (s *Session) run(inputs map[string]Tensor, opts *onnxruntime.RunOptions) (map[string]Tensor, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.s == nil {
		return nil, errors.New("session is closed")
	}
	for name := range inputs {
		if !slices.ContainsFunc(s.inputs, func(x IOInfo) bool { return x.Name == name }) {
			return nil, fmt.Errorf("unknown input %q (model inputs: %s)", name, infoList(s.inputs))
		}
	}
	values := make([]onnxruntime.Value, len(s.inputs))
	defer destroyAll(values)
	for i, want := range s.inputs {
		t, ok := inputs[want.Name]
		if !ok {
			return nil, fmt.Errorf("missing input %q (model inputs: %s)", want.Name, infoList(s.inputs))
		}
		v, err := makeValue(want, t)
		if err != nil {
			return nil, err
		}
		values[i] = v
	}
	outs := make([]onnxruntime.Value, len(s.outputs))
	defer destroyAll(outs)
	var err error
	if opts == nil {
		err = s.s.Run(values, outs)
	} else {
		err = s.s.RunWithOptions(values, outs, opts)
	}
	if err != nil {
		return nil, err
	}
	return s.collect(outs)
}

func destroyAll(vs []onnxruntime.Value) {
	for _, v := range vs {
		if v != nil {
			v.Destroy()
		}
	}
}

// collect converts a run's outputs.
func (s *Session) collect(outs []onnxruntime.Value) (map[string]Tensor, error) {
	res := make(map[string]Tensor, len(outs))
	for i, v := range outs {
		name := s.outputs[i].Name
		switch v := v.(type) {
		case *onnxruntime.Tensor[float32]:
			res[name] = Tensor{Shape: v.GetShape(), Data: v.GetData()}
		case *onnxruntime.Tensor[int64]:
			res[name] = Tensor{Shape: v.GetShape(), Int64: v.GetData()}
		case nil:
			return nil, fmt.Errorf("output %q: ONNX Runtime returned no value", name)
		default:
			return nil, fmt.Errorf("output %q has element type %s; only float32 and int64 are supported", name, s.outputs[i].Type)
		}
	}
	return res, nil
}

func makeValue(want IOInfo, t Tensor) (onnxruntime.Value, error) {
	got := t.Shape
	if len(got) == 0 {
		return nil, fmt.Errorf("input %q: scalar (rank 0) tensors are not supported; want shape %s", want.Name, shapeString(want.Shape))
	}
	bad := want.Shape != nil && len(got) != len(want.Shape)
	for i, d := range got {
		if d < 0 {
			bad = true
		}
		if want.Shape != nil && i < len(want.Shape) && want.Shape[i] >= 0 && want.Shape[i] != d {
			bad = true
		}
	}
	if bad {
		return nil, fmt.Errorf("input %q: got shape %s, want %s", want.Name, shapeString(got), shapeString(want.Shape))
	}
	n := int64(1)
	for _, d := range got {
		n *= d
	}
	shape := onnxruntime.Shape(slices.Clone(got))
	switch want.Type {
	case "float32":
		if t.Int64 != nil && t.Data == nil {
			return nil, fmt.Errorf("input %q: model wants float32, got int64 data", want.Name)
		}
		if int64(len(t.Data)) != n {
			return nil, fmt.Errorf("input %q: shape %s needs %d values, got %d", want.Name, shapeString(got), n, len(t.Data))
		}
		return onnxruntime.NewTensor(shape, t.Data)
	case "int64":
		if t.Int64 == nil && t.Data != nil {
			return nil, fmt.Errorf("input %q: model wants int64, got float32 data", want.Name)
		}
		if int64(len(t.Int64)) != n {
			return nil, fmt.Errorf("input %q: shape %s needs %d values, got %d", want.Name, shapeString(got), n, len(t.Int64))
		}
		return onnxruntime.NewTensor(shape, t.Int64)
	}
	return nil, fmt.Errorf("input %q has element type %s; only float32 and int64 are supported", want.Name, want.Type)
}

func shapeString(s []int64) string {
	if s == nil {
		return "[?]"
	}
	parts := make([]string, len(s))
	for i, d := range s {
		if d < 0 {
			parts[i] = "?"
		} else {
			parts[i] = fmt.Sprint(d)
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func infoList(v []IOInfo) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = x.String()
	}
	return strings.Join(parts, ", ")
}

// Close releases the session, and gives the memory it freed back to the system
// (glibc keeps a vit_b_16 session's worth otherwise). Runs in progress finish first;
// later calls to Run fail. Closing twice is harmless.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s == nil {
		return nil
	}
	err := s.s.Destroy()
	s.s = nil
	osmem.TrimC()
	if err != nil {
		return fmt.Errorf("ort: %s: %w", s.name, err)
	}
	return nil
}

// RunFile opens the model at modelPath, runs it once on inputs and closes it.
func RunFile(modelPath string, inputs map[string]Tensor, opts ...Option) (map[string]Tensor, error) {
	s, err := Open(modelPath, opts...)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Run(inputs)
}
