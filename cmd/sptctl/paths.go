package main

// Outputs are checked before any work: every command calls guardOutputs first, with
// the files it reads and the files it will write, so that no command overwrites its
// own inputs (whatever the spelling: ./x, a/../x, a symbolic link, a hard link) and
// none computes for minutes and then finds it cannot write.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/internal/scratch"
)

// pathArg is a file named on the command line: what names it (a flag, "--model") and
// the path.
type pathArg struct {
	what, path string
}

func (p pathArg) String() string { return p.what + " " + p.path }

// resolvePath is the absolute form of p with every symbolic link of its existing part
// resolved; the part that does not exist yet is joined on as written (cleaned).
func resolvePath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	var rest []string
	for cur := abs; ; {
		r, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(append([]string{r}, rest...)...), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return abs, nil
		}
		rest = append([]string{filepath.Base(cur)}, rest...)
		cur = parent
	}
}

// samePath says whether a and b are the same file: the same path once resolved, or the
// same existing file under two names (hard links).
func samePath(a, b string) bool {
	ra, errA := resolvePath(a)
	rb, errB := resolvePath(b)
	if errA == nil && errB == nil && ra == rb {
		return true
	}
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

// guardOutputs is called by a command before it does any work. It refuses (exit 1) an
// output that is one of the inputs, or another output; an output that is a folder; an
// output whose folder cannot be written. It creates missing output folders (removed
// again if the command fails while they are still empty: see removeCreatedDirs).
// Empty paths are skipped.
func guardOutputs(c *cli.Context, ins, outs []pathArg) error {
	ins = slices.DeleteFunc(slices.Clone(ins), func(p pathArg) bool { return p.path == "" })
	outs = slices.DeleteFunc(slices.Clone(outs), func(p pathArg) bool { return p.path == "" })
	for i, o := range outs {
		for _, in := range ins {
			if samePath(o.path, in.path) {
				return fmt.Errorf("%s is the same file as %s: refusing to overwrite an input; choose another output", o, in)
			}
		}
		for _, o2 := range outs[:i] {
			if samePath(o.path, o2.path) {
				return usagef("%s is the same file as %s; give them different paths", o, o2)
			}
		}
		if st, err := os.Stat(o.path); err == nil && st.IsDir() {
			return fmt.Errorf("%s is a folder; give a file name", o)
		}
	}
	for _, o := range outs {
		if err := prepareDir(c, o, filepath.Dir(o.path)); err != nil {
			return err
		}
	}
	return nil
}

// guardOutputDir is guardOutputs for a command that writes a folder (and the files in
// it, given as outs): the folder is created if missing and must be writable.
func guardOutputDir(c *cli.Context, ins []pathArg, dir pathArg, outs ...pathArg) error {
	for _, in := range ins {
		if in.path != "" && samePath(dir.path, in.path) {
			return fmt.Errorf("%s is the same as %s: refusing to write into an input; choose another output folder", dir, in)
		}
	}
	if st, err := os.Stat(dir.path); err == nil && !st.IsDir() {
		return fmt.Errorf("%s exists and is not a folder", dir)
	}
	if err := guardOutputs(c, ins, outs); err != nil {
		return err
	}
	return prepareDir(c, dir, dir.path)
}

// prepareDir creates dir (the folder of output o) if it is missing and checks that a
// file can be created in it.
func prepareDir(c *cli.Context, o pathArg, dir string) error {
	if dir == "" {
		dir = "."
	}
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		created, err := mkdirAll(dir)
		noteCreatedDirs(c, created)
		if err != nil {
			return fmt.Errorf("%s: cannot create its folder: %w", o, err)
		}
	case err != nil:
		return fmt.Errorf("%s: %w", o, err)
	case !st.IsDir():
		return fmt.Errorf("%s: %s is not a folder", o, dir)
	}
	f, err := scratch.CreateFile(dir, ".sptctl-probe-", "")
	if err != nil {
		return fmt.Errorf("%s: cannot write in %s: %w", o, dir, unwrapPathError(err))
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// mkdirAll is os.MkdirAll that returns the folders it made, outermost first.
func mkdirAll(dir string) ([]string, error) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	slices.Reverse(missing)
	var made []string
	for _, d := range missing {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return made, err
		}
		made = append(made, d)
	}
	return made, nil
}

const createdDirsKey = "sptctl.created-dirs"

func noteCreatedDirs(c *cli.Context, dirs []string) {
	if c == nil || len(dirs) == 0 {
		return
	}
	if c.App.Metadata == nil {
		c.App.Metadata = map[string]any{}
	}
	prev, _ := c.App.Metadata[createdDirsKey].([]string)
	c.App.Metadata[createdDirsKey] = append(prev, dirs...)
}

// removeCreatedDirs removes the output folders guardOutputs created, innermost first,
// where they are still empty: a failed command leaves no empty folders behind.
func removeCreatedDirs(app *cli.App) {
	dirs, _ := app.Metadata[createdDirsKey].([]string)
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i]) // fails, harmlessly, where something was written
	}
}

// unwrapPathError drops the temporary name from a *PathError ("open /d/.x-123:
// permission denied" -> "permission denied").
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// hasExt says whether path ends in one of exts (case-insensitive, with the dot).
func hasExt(path string, exts ...string) bool {
	e := strings.ToLower(filepath.Ext(path))
	return slices.Contains(exts, e)
}

// writeVia writes the file path by calling write with the name of a scratch file
// beside it (of the same extension, for writers that choose the format by it), then
// renames that into place: path is replaced only by a complete file, and left as it
// was if write fails.
func writeVia(path string, write func(tmp string) error) error {
	f, err := scratch.CreateFile(filepath.Dir(path), "."+filepath.Base(path)+".tmp-", filepath.Ext(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	f.Close()
	if err := write(tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
