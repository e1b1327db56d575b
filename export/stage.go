package export

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sptctl/sptctl/internal/scratch"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Verify checks an export before it is committed: it is called with the path of the
// exported model, written in a staging folder (its side files beside it, under their
// final names). An error stops the export and nothing is written.
type Verify func(modelPath string) error

// StagePrefix starts the names of the staging folders exports write in.
const StagePrefix = ".sptctl-export-"

// stage is a temporary folder inside the destination folder, where an export is written
// and verified before its files are renamed into place.
type stage struct {
	dir, tmp   string
	createdDir bool
}

func newStage(dir string) (*stage, error) {
	s := &stage{dir: dir}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		s.createdDir = true
	} else if err != nil {
		return nil, err
	}
	// Named after this process: the next export into dir removes the staging folders
	// of runs that were killed (scratch.Mkdir), not those of concurrent ones.
	tmp, err := scratch.Mkdir(dir, StagePrefix)
	if err != nil {
		s.abort()
		return nil, err
	}
	s.tmp = tmp
	return s, nil
}

func (s *stage) path(name string) string { return filepath.Join(s.tmp, name) }

// abort removes the staging folder, and the destination folder if newStage made it and
// it is empty again.
func (s *stage) abort() {
	if s.tmp != "" {
		os.RemoveAll(s.tmp)
	}
	if s.createdDir {
		os.Remove(s.dir) // fails, harmlessly, if something else is in it
	}
}

// commit renames the staged files into the destination folder, in the order given
// (side files first, the model last), then removes the staging folder.
func (s *stage) commit(names ...string) error {
	for _, n := range names {
		if err := os.Rename(s.path(n), filepath.Join(s.dir, n)); err != nil {
			return err
		}
	}
	if d, err := os.Open(s.dir); err == nil {
		d.Sync()
		d.Close()
	}
	s.createdDir = false
	s.abort()
	return nil
}

// SaveVerified writes m to path the way onnxio.Save does (tensor data in a side file
// only when the model would pass the protobuf size limit), but first in a staging
// folder beside path, where verify (if not nil) checks it; only then are the files
// renamed into place. On any error nothing is left behind.
func SaveVerified(path string, m *onnxpb.ModelProto, verify Verify) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if name == "" {
		return fmt.Errorf("save %s: not a file name", path)
	}
	st, err := newStage(dir)
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			st.abort()
		}
	}()
	if err := onnxio.Save(st.path(name), m); err != nil {
		return err
	}
	if verify != nil {
		if err := verify(st.path(name)); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(st.tmp)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if e.Name() != name {
			names = append(names, e.Name())
		}
	}
	if err := st.commit(append(names, name)...); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	ok = true
	return nil
}
