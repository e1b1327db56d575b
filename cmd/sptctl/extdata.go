package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protowire"
)

// modelInputs are the files a model at path is read from: the model, and the external
// data files its initializers name (an output must not overwrite those either). A model
// that cannot be read is left for the command to report.
func modelInputs(what, path string) []pathArg {
	if path == "" {
		return nil
	}
	ins := []pathArg{{what, path}}
	locs, err := externalDataFiles(path)
	if err != nil {
		return ins
	}
	for _, l := range locs {
		ins = append(ins, pathArg{what + "'s external data", filepath.Join(filepath.Dir(path), l)})
	}
	return ins
}

// externalDataFiles lists the distinct external-data locations of a model file's graph
// initializers, reading the file as a stream and skipping tensor data (a large model
// costs one pass over its bytes, nothing held in memory).
func externalDataFiles(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	w := &wireReader{r: bufio.NewReaderSize(f, 1<<16)}
	seen := map[string]bool{}
	var locs []string
	// ModelProto.graph (7) > GraphProto.initializer (5) > TensorProto.external_data (13)
	// > StringStringEntryProto key (1), value (2).
	err = w.fields(st.Size(), func(num protowire.Number, n int64) error {
		if num != 7 {
			return w.skip(n)
		}
		return w.fields(n, func(num protowire.Number, n int64) error {
			if num != 5 {
				return w.skip(n)
			}
			return w.fields(n, func(num protowire.Number, n int64) error {
				if num != 13 || n > 1<<16 {
					return w.skip(n)
				}
				b, err := w.bytes(n)
				if err != nil {
					return err
				}
				var key, val string
				for len(b) > 0 {
					fn, ft, k := protowire.ConsumeTag(b)
					if k < 0 || ft != protowire.BytesType {
						return errors.New("bad external_data entry")
					}
					v, m := protowire.ConsumeBytes(b[k:])
					if m < 0 {
						return errors.New("bad external_data entry")
					}
					if fn == 1 {
						key = string(v)
					} else if fn == 2 {
						val = string(v)
					}
					b = b[k+m:]
				}
				if key == "location" && !seen[val] {
					seen[val] = true
					locs = append(locs, val)
				}
				return nil
			})
		})
	})
	return locs, err
}

// wireReader reads protobuf wire format from a stream.
type wireReader struct {
	r *bufio.Reader
}

// fields calls fn for each length-delimited field in the next limit bytes, which must
// consume exactly its n bytes; other fields are skipped.
func (w *wireReader) fields(limit int64, fn func(num protowire.Number, n int64) error) error {
	for limit > 0 {
		tag, k, err := w.uvarint()
		if err != nil {
			return err
		}
		limit -= k
		num, typ := protowire.DecodeTag(tag)
		var n int64
		switch typ {
		case protowire.VarintType:
			_, k, err = w.uvarint()
			limit -= k
			if err != nil {
				return err
			}
			continue
		case protowire.Fixed32Type:
			n = 4
		case protowire.Fixed64Type:
			n = 8
		case protowire.BytesType:
			v, k, err := w.uvarint()
			if err != nil {
				return err
			}
			limit -= k
			if v > uint64(limit) {
				return io.ErrUnexpectedEOF
			}
			n = int64(v)
			if err := fn(num, n); err != nil {
				return err
			}
			limit -= n
			continue
		default:
			return fmt.Errorf("wire type %d", typ)
		}
		if err := w.skip(n); err != nil {
			return err
		}
		limit -= n
	}
	if limit < 0 {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func (w *wireReader) skip(n int64) error {
	_, err := w.r.Discard(int(n))
	return err
}

func (w *wireReader) bytes(n int64) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(w.r, b)
	return b, err
}

func (w *wireReader) uvarint() (uint64, int64, error) {
	var x uint64
	for i := 0; i < 10; i++ {
		b, err := w.r.ReadByte()
		if err != nil {
			if i > 0 && errors.Is(err, io.EOF) {
				return 0, 0, io.ErrUnexpectedEOF
			}
			return 0, 0, err
		}
		x |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			return x, int64(i + 1), nil
		}
	}
	return 0, 0, errors.New("varint too long")
}
