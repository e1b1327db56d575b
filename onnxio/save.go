package onnxio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/scratch"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// SaveOptions control where Save puts tensor data.
type SaveOptions struct {
	// ExternalData is the name of the side file, relative to the model's folder, that
	// receives every initializer of at least Threshold bytes. Empty means inline,
	// unless the model would be larger than MaxProtoSize: then "<model file>.data".
	ExternalData string
	// Threshold is the smallest tensor, in bytes, moved to the side file (default 1024).
	Threshold int
	// Align pads each tensor's offset in the side file to a multiple of Align bytes
	// (default 64), so readers can map tensors without copying.
	Align int
	// Limit is the protobuf size above which the data goes to a side file even when
	// ExternalData is empty (default MaxProtoSize).
	Limit int
}

// Save writes m to path (atomically), inline unless it is too large for one protobuf.
func Save(path string, m *onnxpb.ModelProto) error {
	return SaveWith(path, m, SaveOptions{})
}

// SaveWith writes m to path with the given options. The model and any side file are
// each written to a temporary file and renamed into place; the model is streamed with
// EncodeTo, so the file holds Encode's bytes without their being held in memory. m is
// left as it was (SaveWith detaches external tensors while it encodes and restores them
// before it returns), so m must not be used concurrently with a save.
func SaveWith(path string, m *onnxpb.ModelProto, opt SaveOptions) error {
	if opt.Threshold <= 0 {
		opt.Threshold = 1024
	}
	if opt.Align <= 0 {
		opt.Align = 64
	}
	if opt.Limit <= 0 {
		opt.Limit = MaxProtoSize
	}
	if opt.ExternalData == "" && proto.Size(m) > opt.Limit {
		opt.ExternalData = filepath.Base(path) + ".data"
	}
	if opt.ExternalData != "" {
		restore, err := writeExternal(filepath.Dir(path), m, opt)
		if err != nil {
			return fmt.Errorf("save %s: %w", path, err)
		}
		defer restore()
	}
	if n := proto.Size(m); n > MaxProtoSize {
		return fmt.Errorf("save %s: model is %d bytes even with external data, over the 2 GiB protobuf limit", path, n)
	}
	if err := WriteFileAtomic(path, func(w io.Writer) error { return EncodeTo(w, m) }); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	return nil
}

// writeExternal writes the large initializers of m to the side file and points them at
// it. The returned function puts the data back in m.
func writeExternal(dir string, m *onnxpb.ModelProto, opt SaveOptions) (restore func(), err error) {
	loc := filepath.ToSlash(filepath.Clean(opt.ExternalData))
	if filepath.IsAbs(opt.ExternalData) || strings.HasPrefix(loc, "../") {
		return nil, fmt.Errorf("external data file %q must be relative to the model's folder", opt.ExternalData)
	}
	// saved holds the fields of a tensor that are changed to point it at the side file.
	type saved struct {
		t       *onnxpb.TensorProto
		raw     []byte
		f32     []float32
		i64     []int64
		i32     []int32
		f64     []float64
		loc     *onnxpb.TensorProto_DataLocation
		extData []*onnxpb.StringStringEntryProto
	}
	var moved []saved
	restore = func() {
		for _, s := range moved {
			s.t.RawData, s.t.FloatData, s.t.Int64Data, s.t.Int32Data, s.t.DoubleData = s.raw, s.f32, s.i64, s.i32, s.f64
			s.t.DataLocation, s.t.ExternalData = s.loc, s.extData
		}
	}
	err = WriteFileAtomic(filepath.Join(dir, loc), func(w io.Writer) error {
		var off int64
		for _, t := range m.GetGraph().GetInitializer() {
			if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
				return fmt.Errorf("initializer %q: external data not resolved", t.GetName())
			}
			data, err := Bytes(t)
			if err != nil {
				return err
			}
			if len(data) < opt.Threshold {
				continue
			}
			if pad := (int64(opt.Align) - off%int64(opt.Align)) % int64(opt.Align); pad > 0 {
				if _, err := w.Write(make([]byte, pad)); err != nil {
					return err
				}
				off += pad
			}
			if _, err := w.Write(data); err != nil {
				return err
			}
			moved = append(moved, saved{t, t.RawData, t.FloatData, t.Int64Data, t.Int32Data, t.DoubleData, t.DataLocation, t.ExternalData})
			t.RawData, t.FloatData, t.Int64Data, t.Int32Data, t.DoubleData = nil, nil, nil, nil, nil
			t.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
			t.ExternalData = []*onnxpb.StringStringEntryProto{
				{Key: proto.String("location"), Value: proto.String(loc)},
				{Key: proto.String("offset"), Value: proto.String(strconv.FormatInt(off, 10))},
				{Key: proto.String("length"), Value: proto.String(strconv.Itoa(len(data)))},
			}
			off += int64(len(data))
		}
		return nil
	})
	if err != nil {
		restore()
		return nil, err
	}
	return restore, nil
}

// resolveExternal reads every external initializer of m from its side file in dir.
// A location must name a regular file inside dir once every symbolic link on the way is
// followed (dir's own included), so no link can bring a file from elsewhere into the
// model; the declared size is checked against the file's size before anything is
// allocated.
func resolveExternal(m *onnxpb.ModelProto, dir string) error {
	type sideFile struct {
		f    *os.File
		size int64
	}
	files := map[string]sideFile{}
	defer func() {
		for _, f := range files {
			f.f.Close()
		}
	}()
	var root string // dir with its links followed, made absolute (once, when needed)
	for _, t := range m.GetGraph().GetInitializer() {
		if t.GetDataLocation() != onnxpb.TensorProto_EXTERNAL {
			continue
		}
		var loc string
		off, length := int64(0), int64(-1)
		for _, kv := range t.ExternalData {
			var err error
			switch kv.GetKey() {
			case "location":
				loc = kv.GetValue()
			case "offset":
				off, err = strconv.ParseInt(kv.GetValue(), 10, 64)
			case "length":
				length, err = strconv.ParseInt(kv.GetValue(), 10, 64)
				if err == nil && length < 0 {
					err = errors.New("negative")
				}
			}
			if err != nil || off < 0 {
				return fmt.Errorf("initializer %q: bad external data %s %q", t.GetName(), kv.GetKey(), kv.GetValue())
			}
		}
		clean := filepath.Clean(filepath.FromSlash(loc))
		if loc == "" || filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) {
			return fmt.Errorf("initializer %q: external data location %q is not a file inside the model's folder", t.GetName(), loc)
		}
		want, err := ByteSize(t.Dims, t.GetDataType())
		if err != nil {
			return fmt.Errorf("initializer %q: external data: %w", t.GetName(), err)
		}
		if length < 0 {
			length = want
		}
		if length != want {
			return fmt.Errorf("initializer %q: external data length %d, but shape %v needs %d bytes", t.GetName(), length, t.Dims, want)
		}
		sf, ok := files[clean]
		if !ok {
			if root == "" {
				if root, err = realPath(dir); err != nil {
					return fmt.Errorf("model folder %s: %w", dir, err)
				}
			}
			name := filepath.Join(dir, clean)
			real, err := realPath(name)
			if err != nil {
				return fmt.Errorf("initializer %q: external data file %s: %w", t.GetName(), name, err)
			}
			if rel, err := filepath.Rel(root, real); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return fmt.Errorf("initializer %q: external data file %s leads to %s, outside the model's folder (through a symbolic link)", t.GetName(), name, real)
			}
			// Stat before opening: opening a FIFO would block until someone writes.
			if st, err := os.Stat(real); err == nil && !st.Mode().IsRegular() {
				return fmt.Errorf("initializer %q: external data file %s is not a regular file", t.GetName(), name)
			}
			f, err := os.Open(real)
			if err != nil {
				return fmt.Errorf("initializer %q: external data file %s: %w", t.GetName(), name, errors.Unwrap(err))
			}
			st, err := f.Stat()
			if err != nil || !st.Mode().IsRegular() {
				f.Close()
				return fmt.Errorf("initializer %q: external data file %s is not a regular file", t.GetName(), name)
			}
			sf = sideFile{f, st.Size()}
			files[clean] = sf
		}
		if off > sf.size || length > sf.size-off {
			return fmt.Errorf("initializer %q: external data file %s is too short (%d bytes; needs bytes %d..%d)", t.GetName(), filepath.Join(dir, clean), sf.size, off, uint64(off)+uint64(length))
		}
		buf := make([]byte, length)
		if _, err := sf.f.ReadAt(buf, off); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("initializer %q: external data file %s is too short (needs bytes %d..%d)", t.GetName(), filepath.Join(dir, clean), off, off+length)
			}
			return fmt.Errorf("initializer %q: read %s: %w", t.GetName(), filepath.Join(dir, clean), err)
		}
		t.RawData = buf
		t.DataLocation = nil
		t.ExternalData = nil
	}
	return nil
}

// realPath is path made absolute with every symbolic link in it followed.
func realPath(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", errors.New("no such file or directory")
		}
		return "", errors.Unwrap(err)
	}
	return real, nil
}

// WriteFileAtomic writes a file by calling write on a temporary file in the same
// folder, syncing it and renaming it to path. On any error the temporary file is
// removed and path is left as it was.
func WriteFileAtomic(path string, write func(io.Writer) error) (err error) {
	// The temporary name records this process: a later write of path removes those
	// of killed runs (scratch.Clean).
	f, err := scratch.CreateFile(filepath.Dir(path), "."+filepath.Base(path)+".tmp-", "")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err = write(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
